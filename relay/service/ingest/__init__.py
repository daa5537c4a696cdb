"""The ingest side of the service: fronts (RTMP, WHIP, URL), one session lifetime,
admission, the control-plane interface and the client of the session workers."""
