"""gunicorn settings for the analytics API; each can be overridden from the environment.

Read from the project's root through gunicorn.conf.py, and by an installed package with
``gunicorn -c python:analytics.gunicorn_conf 'analytics:create_app()'``.

GUNICORN_BIND      address to listen on (127.0.0.1:8000)
WEB_CONCURRENCY    worker processes (one per CPU)
GUNICORN_THREADS   threads per worker (8)
GUNICORN_TIMEOUT   seconds before a silent worker is restarted (30)
LOG_LEVEL          gunicorn's error-log level (info)
GUNICORN_ACCESS_LOG  access log file, "-" for stdout (the default), "off" for none;
                   with LOG_FORMAT=json the app writes the access log and this is off
FORWARDED_ALLOW_IPS  proxies whose X-Forwarded-* headers gunicorn trusts (127.0.0.1)
"""

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# Threaded workers, one process per CPU: the requests a process serves at once share its
# transactions (analytics/committer.py), and Python's work is spread over every CPU.
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so that slow leaks cannot grow without bound.
max_requests = 20000
max_requests_jitter = 2000
_json_logs = os.environ.get("LOG_FORMAT", "").strip().lower() == "json"
accesslog = (
    None
    if os.environ.get("GUNICORN_ACCESS_LOG", "-") in ("", "off") or _json_logs
    else os.environ.get("GUNICORN_ACCESS_LOG", "-")
)
# The path without its query string, and no referer: a query string may hold a user id or an
# ingest key, which have no place in a log.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s "%(a)s"'

errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
