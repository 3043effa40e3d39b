"""The REST and websocket API: the app, the alert and log routes, the live streams."""
