"""Authentication (JWT, API keys), permissions, field encryption and request protection."""
