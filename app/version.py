"""The version of the API this code serves (OpenAPI ``info.version``, the webhook User-Agent)."""
API_VERSION = "1.0.0"
