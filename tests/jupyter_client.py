"""A real Jupyter client for binderd's end-to-end test.

Through binderd's proxy only: start a kernel (POST {location}api/kernels),
open its WebSocket channels with websocket-client, run print(6*7) and read
the 42 back from the kernel's stream output.

    python jupyter_client.py http://127.0.0.1:PORT binders /user/TOKEN/
    python jupyter_client.py http://127.0.0.1:PORT thebe

"thebe" first asks POST /api/spawn/ with a text/plain body (as thebe does),
then builds the kernel URLs the way thebe does: base + url + '/' + 'api/...',
which doubles the slash.
"""

import datetime
import json
import sys
import time
import urllib.request
import uuid

import websocket


def post(url, body, content_type="application/json"):
    req = urllib.request.Request(url, data=body.encode(), method="POST")
    if content_type:
        req.add_header("Content-Type", content_type)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read() or b"null")


def execute(ws_url, code):
    ws = websocket.create_connection(ws_url, timeout=30)
    session = uuid.uuid4().hex
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {
            "msg_id": msg_id,
            "username": "binderd-test",
            "session": session,
            "msg_type": "execute_request",
            "version": "5.3",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
        },
        "channel": "shell",
        "buffers": [],
    }))
    out = []
    deadline = time.time() + 60
    while time.time() < deadline:
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["header"]["msg_type"]
        if kind == "stream":
            out.append(msg["content"]["text"])
        elif kind == "error":
            raise SystemExit("kernel error: %s" % msg["content"])
        elif kind == "status" and msg["content"]["execution_state"] == "idle" and out:
            break
    ws.close()
    return "".join(out)


def main():
    base, mode = sys.argv[1], sys.argv[2]
    if mode == "thebe":
        status, doc = post(base + "/api/spawn/", json.dumps({"image_name": "jupyter/notebook"}),
                           content_type="text/plain;charset=UTF-8")
        assert status == 200, (status, doc)
        prefix = doc["url"] + "/"          # thebe: base + data.url + '/'
    else:
        prefix = sys.argv[3]
    status, kernel = post(base + prefix + "api/kernels", "{}")
    assert status == 201, (status, kernel)
    ws_base = base.replace("http://", "ws://", 1)
    text = execute("%s%sapi/kernels/%s/channels" % (ws_base, prefix, kernel["id"]), "print(6*7)")
    print(json.dumps({"output": text, "prefix": prefix}))


if __name__ == "__main__":
    main()
