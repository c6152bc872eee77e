"""The two-device todo of docs/first-app.md: a declared store on the library's server."""
