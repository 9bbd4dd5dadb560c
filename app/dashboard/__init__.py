"""The web dashboard: a static single page that talks to the public API with the user's token."""
