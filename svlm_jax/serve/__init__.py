"""A live commentary server: many video sessions in one batched `Streamer` step, over WebSockets.

Modules:
  config      `ServerConfig`, every limit and capacity of a server;
  protocol    the JSON messages and the binary frame format of the WebSocket protocol (docs/SERVING.md);
  frames      JPEG decoding and the assembly of timestamped frames into `video.Second`s;
  sources     server-side sources (file, URL, RTSP, uploads) paced to real time;
  limits      per-session frame-rate limits and per-client session counts;
  session     one viewer's session and the registry of sessions;
  engine      the thread that steps the batched `Streamer` once a second for every active session;
  metrics     Prometheus metrics (sessions, step latency, lag, skipped seconds, compiles);
  transcript  a session's commentary and answers as WebVTT or JSON lines;
  app         the Starlette application: the page, /health, /metrics, uploads, transcripts, /ws.
"""
from svlm_jax.serve.app import create_app
from svlm_jax.serve.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
