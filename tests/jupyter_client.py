"""A real Jupyter client for binderd's end-to-end test.

Through binderd's proxy only: start a kernel (POST {location}api/kernels),
open its WebSocket channels with websocket-client, run print(6*7) and read
the 42 back from the kernel's stream output.

    python jupyter_client.py http://127.0.0.1:PORT binders /user/TOKEN/
    python jupyter_client.py http://127.0.0.1:PORT thebe

"thebe" first asks POST /api/spawn/ with a text/plain body (as thebe does),
then builds the kernel URLs the way thebe does: base + url + '/' + 'api/...',
which doubles the slash.

    python jupyter_client.py http://127.0.0.1:PORT thebe-page

    python jupyter_client.py http://127.0.0.1:PORT binderhub gh/org/repo/HEAD

    python jupyter_client.py http://127.0.0.1:PORT kernel /user/TOKEN/ CODE
    python jupyter_client.py http://127.0.0.1:PORT session /user/TOKEN/ CODE
    python jupyter_client.py http://127.0.0.1:PORT start /user/TOKEN/ CODE

"kernel" and "session" list the kernels already running, ask for one the
way the classic notebook (POST api/kernels) or JupyterLab (POST
api/sessions) does, run CODE in it and print what they saw; "start" only
sends CODE to a new kernel and leaves it running.

"binderhub" follows BinderHub's API: /build's event stream until ready, then
the url and token from it for api/status and a kernel round trip.

"thebe-page" replays what the tmpnb-era thebe in a browser sends from a page
on another origin, in its paths and headers: the text/plain spawn, then with
its server address built as base + '/' + url + '/' (so '//user/{token}//'),
the CORS preflight of the kernel POST, the POST itself, and the kernel's
WebSocket with a session_id, each with the page's Origin.
"""

import datetime
import json
import sys
import time
import urllib.error
import urllib.request
import uuid

import websocket


PAGE_ORIGIN = "http://127.0.0.1:4000"


def post(url, body, content_type="application/json", headers=None):
    req = urllib.request.Request(url, data=body.encode(), method="POST")
    if content_type:
        req.add_header("Content-Type", content_type)
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read() or b"null")


def request(method, url, headers):
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def thebe_page(base):
    """What thebe (tmpnb era) sends from a page on another origin."""
    origin = {"Origin": PAGE_ORIGIN}
    req = urllib.request.Request(base + "/api/spawn/", method="POST",
                                 data=json.dumps({"image_name": "jupyter/notebook"}).encode(),
                                 headers=dict(origin, **{"Content-Type": "text/plain;charset=UTF-8"}))
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200, resp.status
        assert resp.headers.get("Access-Control-Allow-Origin") in ("*", PAGE_ORIGIN), dict(resp.headers)
        url = json.loads(resp.read())["url"]
    server = base + "/" + url + "/"       # thebe: tmpnb_url + '/' + data.url + '/'
    kernels = server + "api/kernels"
    status, headers, body = request("OPTIONS", kernels, dict(origin, **{
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }))
    assert 200 <= status < 300, ("preflight", status, body)
    assert headers.get("Access-Control-Allow-Origin") in ("*", PAGE_ORIGIN), ("preflight", dict(headers))
    status, kernel = post(kernels, json.dumps({"name": "python3"}), headers=origin)
    assert status == 201, (status, kernel)
    ws_url = "%sapi/kernels/%s/channels?session_id=%s" % (
        server.replace("http://", "ws://", 1), kernel["id"], uuid.uuid4().hex)
    return execute(ws_url, "print(6*7)", origin=PAGE_ORIGIN), server


def binderhub(base, spec):
    """BinderHub's API as its own example uses it: read /build's event stream
    with requests (stream=True) until ready, then use the url and token."""
    import requests
    r = requests.get(base + "/build/" + spec, stream=True, timeout=60,
                     headers={"Origin": PAGE_ORIGIN, "Accept": "text/event-stream"})
    assert r.status_code == 200, r.status_code
    assert r.headers["Content-Type"] == "text/event-stream", r.headers
    assert r.headers.get("Access-Control-Allow-Origin") in ("*", PAGE_ORIGIN), r.headers
    events = []
    for line in r.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            event = json.loads(line[len("data:"):])
            events.append(event)
            if event["phase"] in ("ready", "failed"):
                break
    r.close()
    ready = events[-1]
    assert ready["phase"] == "ready", events
    url, token = ready["url"], ready["token"]
    auth = {"Authorization": "token " + token}
    without = requests.get(url + "api/status", timeout=30).status_code
    status = requests.get(url + "api/status", headers=auth, timeout=30)
    assert status.status_code == 200, (status.status_code, status.text)
    kernel = requests.post(url + "api/kernels", json={"name": "python3"}, headers=auth, timeout=30)
    assert kernel.status_code == 201, (kernel.status_code, kernel.text)
    ws_url = "%sapi/kernels/%s/channels?session_id=%s" % (
        url.replace("http://", "ws://", 1), kernel.json()["id"], uuid.uuid4().hex)
    text = execute(ws_url, "print(6*7)", headers=["Authorization: token " + token])
    return {"output": text, "phases": [e["phase"] for e in events], "ready": ready,
            "status_without_token": without}


def binderhub_points(base, spec):
    """What BinderHub's clients and test suite rely on beyond one launch, as
    requests sees it: no launch without Accept: text/event-stream, build_only,
    the binder's progress as launching events, Binder's legacy /repo links,
    /versions' builder_info, and /v2 landing in a server whose token may be
    on."""
    import requests

    def stream(url, headers):
        r = requests.get(url, stream=True, timeout=60, headers=headers)
        assert r.status_code == 200, r.status_code
        events = []
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                events.append(json.loads(line[len("data:"):]))
                if events[-1]["phase"] in ("ready", "failed"):
                    break
        r.close()
        return events

    sse = {"Accept": "text/event-stream"}
    out = {"no_accept": stream(base + "/build/" + spec, {}),
           "build_only": stream(base + "/build/" + spec + "?build_only=true", sse)}
    org_repo = "/".join(spec.split("/")[1:3])
    legacy = requests.get(base + "/repo/" + org_repo + "/notebooks/x.ipynb",
                          allow_redirects=False, timeout=30)
    out["legacy"] = [legacy.status_code, legacy.headers.get("Location")]
    out["versions"] = requests.get(base + "/versions", timeout=30).json()
    landed = requests.get(base + "/v2/" + spec + "?urlpath=api/status", timeout=60)
    out["v2"] = {"status": landed.status_code, "url": landed.url,
                 "redirects": [r.status_code for r in landed.history]}
    out["launch"] = stream(base + "/build/" + spec, sse)
    return out


def get(url):
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def warm_kernel(base, mode, prefix, code):
    before = [k["id"] for k in get(base + prefix + "api/kernels")]
    if mode == "session":
        status, doc = post(base + prefix + "api/sessions", json.dumps({
            "path": "Untitled.ipynb", "name": "Untitled.ipynb", "type": "notebook",
            "kernel": {"name": "python3"}}))
        assert status == 201, (status, doc)
        kernel = doc["kernel"]
        location = None
    else:
        req = urllib.request.Request(base + prefix + "api/kernels", data=b'{"name": "python3"}',
                                     method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, kernel, location = resp.status, json.loads(resp.read()), resp.headers.get("Location")
        assert status == 201, (status, kernel)
    ws_url = "%s%sapi/kernels/%s/channels" % (base.replace("http://", "ws://", 1), prefix, kernel["id"])
    if mode == "start":
        ws = send_execute(websocket.create_connection(ws_url, timeout=30), code)
        while True:   # until the kernel says it is busy with it
            msg = json.loads(ws.recv())
            if (msg.get("parent_header", {}).get("msg_id") == ws.msg_id
                    and msg["header"]["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "busy"):
                break
        ws.close()
        return {"id": kernel["id"], "before": before}
    text = execute(ws_url, code)
    return {"id": kernel["id"], "before": before, "location": location, "output": text}


def send_execute(ws, code):
    """Sends one execute_request; returns the socket and the message id."""
    session = uuid.uuid4().hex
    msg_id = uuid.uuid4().hex
    ws.msg_id = msg_id
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
    return ws


def execute(ws_url, code, origin=None, headers=None):
    ws = websocket.create_connection(ws_url, timeout=30, origin=origin, header=headers)
    msg_id = send_execute(ws, code).msg_id
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
    if mode == "binderhub":
        print(json.dumps(binderhub(base, sys.argv[3])))
        return
    if mode == "binderhub-points":
        print(json.dumps(binderhub_points(base, sys.argv[3])))
        return
    if mode in ("kernel", "session", "start"):
        print(json.dumps(warm_kernel(base, mode, sys.argv[3], sys.argv[4])))
        return
    if mode == "thebe-page":
        text, server = thebe_page(base)
        print(json.dumps({"output": text, "prefix": server[len(base):]}))
        return
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
