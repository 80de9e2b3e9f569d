#!/usr/bin/env python3
"""An OpenAI-like server written apart from `pipe-sim`, to try pipe against behaviour its own
simulator does not share: a bucket refilled over a whole minute as OpenAI's headers describe
it, tokens counted as `max_tokens` + characters / 4, 429s with OpenAI's body and no
`retry-after`, latency that grows with the answer (20 ms a token by default), a hidden
capacity refused with a 503 or by closing the connection, HTML 502s from a gateway, a model
without structured outputs. The answers' content comes from a `pipe-sim` upstream run with
no limits and no latency (its port: `upstream` in the config), so schemas are followed.

    pipe-sim --port 18601 --config <(echo '{"latency_ms_median": 0}') &
    python3 benches/independent_server.py config.json &     # see DEFAULTS for the keys
    OPENAI_BASE_URL=http://127.0.0.1:18600/v1 OPENAI_API_KEY=sk-x pipe run pipelines.yaml
    curl -s localhost:18600/_stats                           # what it counted

Standard library only. Results: benches/results/independent_server.md.
"""
import asyncio, json, math, random, sys, time

DEFAULTS = {
    "port": 18600,
    "upstream": 18601,
    "rpm": None,            # requests per minute
    "tpm": None,            # tokens per minute (max_tokens + chars/4)
    "window_s": 60.0,       # bucket holds limit * window_s / 60
    "headers_window_s": None,  # headers describe a bucket of this window instead (enforced: window_s)
    "default_max_tokens": 4096,
    "retry_after": False,   # send retry-after on 429
    "capacity": None,       # in-flight capacity (None = unlimited)
    "schedule": [],         # [{"at_s": 20, "capacity": 10, "latency_mult": 3}]
    "overload_status": 503,
    "overload_mode": "status",  # status | reset (close the socket)
    "latency_s": 0.3,
    "per_token_s": 0.02,
    "sigma": 0.25,
    "drift_period_s": 0,    # multiplicative sine drift
    "drift_amp": 0.0,
    "p_reset": 0.0,         # drop the connection without an answer
    "p_502": 0.0,           # an HTML 502 from a gateway
    "p_slow_body": 0.0,     # send headers, then the body 20 s later
    "headers": True,        # send x-ratelimit-* headers
    "seed": 7,
    "reject_schema": False, # 400 on response_format json_schema (older servers)
}

cfg = dict(DEFAULTS)
if len(sys.argv) > 1:
    cfg.update(json.load(open(sys.argv[1])))
rng = random.Random(cfg["seed"])
START = time.monotonic()
stats = {"requests": 0, "ok": 0, "r429": 0, "overload": 0, "reset": 0, "r502": 0,
         "tokens_counted": 0, "max_in_flight": 0, "first": None, "last": None,
         "busy_sum": 0.0, "out_tokens": 0}
in_flight = 0


class Bucket:
    def __init__(self, per_minute, window_s):
        self.rate = per_minute / 60.0
        self.cap = per_minute * window_s / 60.0
        self.level = self.cap
        self.at = time.monotonic()

    def refill(self):
        now = time.monotonic()
        self.level = min(self.cap, self.level + (now - self.at) * self.rate)
        self.at = now

    def reset_s(self):
        return (self.cap - self.level) / self.rate


def go_dur(s):
    if s < 1:
        return f"{int(s * 1000)}ms"
    if s < 60:
        return f"{s:.3f}".rstrip("0").rstrip(".") + "s"
    m = int(s // 60)
    return f"{m}m{s - 60 * m:.0f}s"


rpm = Bucket(cfg["rpm"], cfg["window_s"]) if cfg["rpm"] else None
tpm = Bucket(cfg["tpm"], cfg["window_s"]) if cfg["tpm"] else None
# What the headers describe, when it is not what is enforced: debited alike.
shown_w = cfg["headers_window_s"]
shown_rpm = Bucket(cfg["rpm"], shown_w) if shown_w and cfg["rpm"] else rpm
shown_tpm = Bucket(cfg["tpm"], shown_w) if shown_w and cfg["tpm"] else tpm


def phase_value(key, default):
    t = time.monotonic() - START
    v = default
    for p in cfg["schedule"]:
        if t >= p["at_s"] and key in p:
            v = p[key]
    return v


def rl_headers():
    h = {}
    if not cfg["headers"]:
        return h
    for name, b, lim in (("requests", shown_rpm, cfg["rpm"]), ("tokens", shown_tpm, cfg["tpm"])):
        if b is None:
            continue
        b.refill()
        h[f"x-ratelimit-limit-{name}"] = str(lim)
        h[f"x-ratelimit-remaining-{name}"] = str(max(0, int(b.level)))
        h[f"x-ratelimit-reset-{name}"] = go_dur(b.reset_s())
    return h


def response(status, body, headers=None, reason="OK"):
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        ctype = "application/json"
    else:
        ctype = "text/html"
        body = body.encode() if isinstance(body, str) else body
    lines = [f"HTTP/1.1 {status} {reason}", f"content-type: {ctype}",
             f"content-length: {len(body)}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def upstream(path, body, hdrs):
    r, w = await asyncio.open_connection("127.0.0.1", cfg["upstream"])
    head = [f"POST {path} HTTP/1.1", "host: x", "connection: close",
            f"content-length: {len(body)}", "content-type: application/json"]
    if "authorization" in hdrs:
        head.append("authorization: " + hdrs["authorization"])
    w.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await w.drain()
    data = await r.read()
    w.close()
    headpart, _, payload = data.partition(b"\r\n\r\n")
    status = int(headpart.split(b" ", 2)[1])
    return status, payload


async def handle_chat(path, body, hdrs):
    """Returns bytes to send, or None to drop the connection."""
    global in_flight
    stats["requests"] += 1
    now = time.monotonic() - START
    stats["first"] = stats["first"] if stats["first"] is not None else now
    req = json.loads(body)
    if cfg["reject_schema"] and (req.get("response_format") or {}).get("type") == "json_schema":
        return response(400, {"error": {"message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
                                        "type": "invalid_request_error", "param": "response_format", "code": None}}, {}, "Bad Request")
    chars = sum(len(m["content"]) if isinstance(m.get("content"), str)
                else sum(len(p.get("text", "")) for p in m.get("content") or [])
                for m in req.get("messages", []))
    max_t = req.get("max_completion_tokens") or req.get("max_tokens") or cfg["default_max_tokens"]
    cost = max_t + math.ceil(chars / 4)
    for b in (rpm, tpm):
        if b:
            b.refill()
    if (rpm and rpm.level < 1) or (tpm and tpm.level < cost):
        stats["r429"] += 1
        which, lim, b, need = (("requests", cfg["rpm"], rpm, 1) if rpm and rpm.level < 1
                               else ("tokens", cfg["tpm"], tpm, cost))
        wait = (need - b.level) / b.rate
        h = rl_headers()
        if cfg["retry_after"]:
            h["retry-after"] = str(max(1, math.ceil(wait)))
        used = int(b.cap - b.level)
        short = "RPM" if which == "requests" else "TPM"
        msg = (f"Rate limit reached for gpt-4o-mini in organization org-indep on {which} per min"
               f" ({short}): Limit {lim}, Used {used}, Requested {need}. Please try again in"
               f" {go_dur(wait)}. Visit https://platform.openai.com/account/rate-limits to learn more.")
        return response(429, {"error": {"message": msg, "type": which, "param": None,
                                        "code": "rate_limit_exceeded"}}, h, "Too Many Requests")
    cap = phase_value("capacity", cfg["capacity"])
    if cap is not None and in_flight >= cap:
        stats["overload"] += 1
        if cfg["overload_mode"] == "reset":
            return None
        st = cfg["overload_status"]
        return response(st, {"error": {"message": "The server is overloaded or not ready yet.",
                                       "type": "server_error", "param": None, "code": None}},
                        {}, "Service Unavailable" if st == 503 else "Too Many Requests")
    if rpm:
        rpm.level -= 1
    if tpm:
        tpm.level -= cost
    for shown, enforced, amount in ((shown_rpm, rpm, 1), (shown_tpm, tpm, cost)):
        if shown is not enforced:
            shown.refill()
            shown.level -= amount
    stats["tokens_counted"] += cost
    u = rng.random()
    if u < cfg["p_reset"]:
        stats["reset"] += 1
        return None
    if u < cfg["p_reset"] + cfg["p_502"]:
        stats["r502"] += 1
        return response(502, "<html><head><title>502 Bad Gateway</title></head><body>"
                        "<center><h1>502 Bad Gateway</h1></center><hr><center>cloudflare</center>"
                        "</body></html>", {}, "Bad Gateway")
    in_flight += 1
    stats["max_in_flight"] = max(stats["max_in_flight"], in_flight)
    t0 = time.monotonic()
    try:
        status, payload = await upstream(path, body, hdrs)
        out_tokens = 0
        try:
            out_tokens = json.loads(payload)["usage"]["completion_tokens"]
            stats["out_tokens"] += out_tokens
        except Exception:
            pass
        mult = phase_value("latency_mult", 1.0)
        if cfg["drift_period_s"]:
            t = time.monotonic() - START
            mult *= 1 + cfg["drift_amp"] * math.sin(2 * math.pi * t / cfg["drift_period_s"])
        lat = (cfg["latency_s"] * math.exp(rng.gauss(0, cfg["sigma"])) +
               cfg["per_token_s"] * out_tokens) * mult
        await asyncio.sleep(lat)
    finally:
        in_flight -= 1
        stats["busy_sum"] += time.monotonic() - t0
    stats["ok"] += 1
    stats["last"] = time.monotonic() - START
    return response(status, json.loads(payload), rl_headers())


async def serve(reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            method, path, _ = line.decode().split(" ", 2)
            hdrs = {}
            while True:
                h = await reader.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.decode().partition(":")
                hdrs[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(hdrs.get("content-length", 0)))
            if path == "/_stats":
                out = dict(stats, in_flight=in_flight, t=time.monotonic() - START)
                writer.write(response(200, out))
            elif path.endswith("/chat/completions"):
                data = await handle_chat(path, body, hdrs)
                if data is None:
                    writer.transport.abort()
                    return
                if rng.random() < cfg["p_slow_body"]:
                    head, _, rest = data.partition(b"\r\n\r\n")
                    writer.write(head + b"\r\n\r\n")
                    await writer.drain()
                    await asyncio.sleep(20)
                    writer.write(rest)
                else:
                    writer.write(data)
            else:
                status, payload = await upstream(path, body, hdrs)
                writer.write(response(status, json.loads(payload)))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    srv = await asyncio.start_server(serve, "127.0.0.1", cfg["port"], backlog=512)
    async with srv:
        await srv.serve_forever()


asyncio.run(main())
