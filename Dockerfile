FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY tessera ./tessera
COPY issuer ./issuer
COPY holder ./holder
COPY verifier ./verifier
COPY schemas ./schemas
RUN pip install --no-cache-dir '.[issuer,verifier]'
USER nobody
EXPOSE 8000
CMD ["tessera", "--help"]
