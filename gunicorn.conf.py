"""gunicorn settings for the analytics API; each can be overridden from the environment.

    GUNICORN_BIND      address to listen on (127.0.0.1:8000)
    WEB_CONCURRENCY    worker processes (one per CPU)
    GUNICORN_THREADS   threads per worker (8)
    GUNICORN_TIMEOUT   seconds before a silent worker is restarted (30)
    LOG_LEVEL          gunicorn's error-log level (info)
    GUNICORN_ACCESS_LOG  access log file, "-" for stdout (the default), "off" for none
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
accesslog = None if os.environ.get("GUNICORN_ACCESS_LOG", "-") in ("", "off") else os.environ.get(
    "GUNICORN_ACCESS_LOG", "-")
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
