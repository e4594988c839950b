"""The framework ceiling: a Flask endpoint that parses a JSON body and answers JSON, nothing
else."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/track")
def track():
    request.get_json(force=True)
    return jsonify({"status": "success", "message": "Event logged."})
