"""Tessera member wallet: keys and DID, credentials, consent, presentations.

>>> from holder import Wallet
>>> w = Wallet.create("alice.wallet", "correct horse battery")
>>> w.receive(sd_jwt_vc)                      # checks the issuer and the key binding
>>> w.present(dcql=..., audience=..., nonce=..., consent=ask_member)
"""

from __future__ import annotations

from holder._wallet import (
    ConsentCallback,
    ConsentItem,
    ConsentRecord,
    ConsentRequest,
    StoredCredential,
    Wallet,
)

__all__ = [
    "ConsentCallback",
    "ConsentItem",
    "ConsentRecord",
    "ConsentRequest",
    "StoredCredential",
    "Wallet",
]
