"""The OpenAPI 3.1 description of the status page API, served at ``/api/v1/openapi.json``.

Kept as Python data beside the handlers it describes (no YAML file to keep in
step, no generator dependency); the tests run schemathesis against it, so a
handler and its description cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

from .. import __version__

_TS = {"type": "string", "description": "UTC, RFC 3339 with milliseconds and Z"}
_TS_OR_NULL = {"type": ["string", "null"], "description": "UTC, RFC 3339 with milliseconds and Z"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_INT_OR_NULL = {"type": ["integer", "null"]}
_STR_OR_NULL = {"type": ["string", "null"]}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required if required is not None else list(props)}


_ERROR = _obj({"error": {"type": "string"}, "message": {"type": "string"}})
_METRIC = _obj({
    "value": {"type": ["number", "boolean", "string", "null"]},
    "unit": {"type": "string"},
    "quality": {"type": "string", "enum": ["good", "uncertain", "bad"]},
    "reason": {"type": "string"},
    "stale": {"type": "boolean", "description": "the device is offline: this is the last value read before"},
}, ["value", "quality", "stale"])
_DEVICE = _obj({
    "id": {"type": "string"}, "driver": {"type": "string"}, "profile": {"type": "string"},
    "enabled": {"type": "boolean"}, "poll_interval_s": {"type": "number"},
    "tags": {"type": "object"},
    "state": {"type": "string", "enum": ["online", "degraded", "offline", "starting", "disabled"]},
    "last_error": _STR_OR_NULL, "last_error_ts": _TS_OR_NULL, "last_reading": _TS_OR_NULL,
    "polls": {"type": "integer"}, "failures": {"type": "integer"}, "consecutive_failures": {"type": "integer"},
    "overruns": {"type": "integer"}, "latency_ms": _NUM_OR_NULL, "avg_latency_ms": _NUM_OR_NULL,
    "metrics": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Metric"}},
})
_EVENT = {"type": "object", "properties": {"id": {"type": "integer"}, "ts": _TS, "kind": {"type": "string"},
                                           "device": {"type": "string"}},
          "required": ["id", "ts", "kind"]}
_DEVICE_DETAIL = {"allOf": [{"$ref": "#/components/schemas/Device"}, _obj({
    "config": _obj({"timeout_s": {"type": "number"}, "offline_after": {"type": "integer"},
                    "backoff_max_s": {"type": "number"}, "bus": _STR_OR_NULL}),
    "profile_info": _obj({
        "vendor": {"type": "string"}, "model": {"type": "string"}, "description": _STR_OR_NULL,
        "points": {"type": "array", "items": _obj({"name": {"type": "string"}, "unit": _STR_OR_NULL,
                                                    "range": {"type": ["array", "null"],
                                                              "items": {"type": "number"}}})},
    }),
    "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
    "driver_status": {"type": ["object", "null"],
                      "description": "what the open driver reports about itself (its counters, the state of a "
                                     "shared adapter or endpoint); null while closed or when it reports nothing"},
})]}
_UPLINK = _obj({
    "kind": {"type": "string", "description": "mqtt, stdout or memory"},
    "state": {"type": "string", "enum": ["connected", "connecting", "disconnected", "none"]},
    "broker": _STR_OR_NULL, "last_error": _STR_OR_NULL, "connected_since": _TS_OR_NULL,
    "state_since": {**_TS_OR_NULL, "description": "since when the uplink is in its current state (to the "
                                                  "page's tick); null without an uplink"},
    "published": {"type": "integer"}, "acked": {"type": "integer"}, "resent": {"type": "integer"},
    "connects": {"type": "integer"}, "inflight": {"type": "integer"}, "pending": {"type": "integer"},
    "publish_rate": {**_NUM_OR_NULL, "description": "messages/s over the last minute; null while not connected"},
    "ack_rate": {**_NUM_OR_NULL, "description": "acknowledged messages/s over the last second; null while not "
                                                 "connected"},
})
_BUFFER = {"type": ["object", "null"], "properties": {
    "depth": {"type": "integer"}, "oldest_ts": _TS_OR_NULL, "oldest_age_s": _NUM_OR_NULL,
    "bytes": {"type": "integer"}, "dropped": {"type": "integer"}, "last_seq": {"type": "integer"},
    "disk_full": {"type": "boolean"}, "spilled": {"type": "integer"},
    "spill_lost": {"type": "integer", "description": "readings lost from the in-memory spill while the disk was "
                                                     "full (announced as buffer_spill_lost)"},
    "kept": {"type": "integer", "description": "acknowledged readings kept for buffer.keep_acked (sent again "
                                               "after a reconnect); not in depth"},
}}
_STATUS = _obj({
    "gateway": {"type": "string"}, "version": {"type": "string"}, "started": _TS, "uptime_s": {"type": "number"},
    "now": _TS,
    "clock": _obj({"synced": {"type": "boolean"}, "check": {"type": "string"}}),
    "devices": _obj({k: {"type": "integer"} for k in ("total", "online", "degraded", "offline", "other")}),
    "uplink": {"$ref": "#/components/schemas/Uplink"},
    "buffer": {"$ref": "#/components/schemas/Buffer"},
    "system": _obj({"cpu_percent": _NUM_OR_NULL, "cpu_seconds": {"type": "number"}, "cpu_count": _INT_OR_NULL,
                    "load1": _NUM_OR_NULL, "rss_bytes": _INT_OR_NULL, "mem_total_bytes": _INT_OR_NULL,
                    "mem_available_bytes": _INT_OR_NULL}),
})
_CHECK_RESULT = _obj({
    "file": {"type": "string"}, "valid": {"type": "boolean"}, "errors": {"type": "integer"},
    "warnings": {"type": "integer"}, "summary": {"type": "string"},
    "diagnostics": {"type": "array", "items": _obj({
        "file": {"type": "string"}, "line": {"type": "integer"}, "col": {"type": "integer"},
        "path": {"type": "string"}, "message": {"type": "string"},
        "severity": {"type": "string", "enum": ["error", "warning"]},
        "text": {"type": "string", "description": "the line `fieldgate validate` prints"},
    })},
})


_COMMAND_RESULT = {
    "type": "object", "required": ["schema", "gateway", "device", "id", "status", "ts"],
    "description": "a fieldgate.command-result/1 message (contract/command.schema.json)",
    "properties": {
        "schema": {"const": "fieldgate.command-result/1"}, "gateway": {"type": "string"},
        "device": {"type": "string"}, "id": {"type": "string"},
        "status": {"type": "string", "enum": ["ok", "mismatch", "rejected", "expired", "failed"]},
        "duplicate": {"type": "boolean"}, "reason": {"type": "string"}, "ts": _TS,
        "metrics": {"type": "object", "additionalProperties": {"type": "object"}},
    },
}
_COMMANDS = _obj({
    "device": {"type": "string"},
    "enabled": {"type": "boolean", "description": "this device takes commands from the local API now"},
    "reason": {**_STR_OR_NULL, "description": "why not, when not"},
    "writable": {"type": "array", "items": _obj({
        "name": {"type": "string"}, "unit": _STR_OR_NULL,
        "write_range": {"type": ["array", "null"], "items": {"type": "number"},
                        "description": "[min, max] a command may write (write_range, else range)"},
        "value": {"type": ["number", "boolean", "string", "null"], "description": "the latest value read"},
        "quality": _STR_OR_NULL, "decimals": _INT_OR_NULL})},
    "recent": {"type": "array", "items": {"type": "object"},
               "description": "the device's recent commands and their results, newest first"},
})


_SERIES = _obj({"t": {"type": "array", "items": {"type": "number"}, "description": "epoch seconds (UTC)"},
                "v": {"type": "array", "items": _NUM_OR_NULL, "description": "null: no value (bad quality)"}})
_STATE_CHANGE = _obj({"t": {"type": "number"}, "state": {"type": "string"}, "error": _STR_OR_NULL})
_METRIC_HISTORY = _obj({
    "metric": {"type": "string"}, "unit": _STR_OR_NULL,
    "hour_points": {"type": "integer", "description": "readings this metric's hour ring holds"},
    "min_step_s": {"type": "number", "description": "0: every reading is kept; else at most one per this many s"},
    "points": {**_SERIES, "description": "the readings themselves (time, value), oldest first, within the hour"},
    "buckets": {**_obj({k: {"type": "array", "items": {"type": "number"}} for k in ("t", "mean", "min", "max")}),
                "description": "15-minute buckets of the day (only when since reaches past the hour)"},
}, ["metric", "unit", "hour_points", "min_step_s", "points"])
_HISTORY_PERIOD = _obj({"received": {"type": "integer"}, "expected": _INT_OR_NULL,
                        "completeness": {**_NUM_OR_NULL, "description": "received / expected, 0 to 1; null for "
                                                                        "devices that push"},
                        "bad": {"type": "integer"}, "uncertain": {"type": "integer"},
                        "unsynced": {"type": "integer", "description": "readings taken with the clock not synced"}})
_QUALITY = _obj({"device": {"type": "string"}, "state": {"type": "string"}, "hour": _HISTORY_PERIOD,
                 "day": _HISTORY_PERIOD,
                 "reasons": {"type": "object", "additionalProperties": {"type": "integer"},
                             "description": "quality:reason -> readings (since start)"},
                 "stale": {"type": "array", "items": {"type": "string"},
                           "description": "points without a value for 3 poll intervals"}})
_SINCE = {"name": "since", "in": "query", "required": False,
          "description": "seconds back (1 to 86400, default 3600) or an RFC 3339 time within the last day",
          "schema": {"anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
                               {"type": "string", "format": "date-time"}]}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _ok(schema: dict[str, Any], description: str = "OK", status: str = "200") -> dict[str, Any]:
    return {status: {"description": description, "content": {"application/json": {"schema": schema}}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Bad request", 401: "Not logged in (or off loopback without a password)",
            403: "CSRF token missing or wrong, or a cross-origin request", 404: "No such device",
            409: "Not possible in this set-up", 413: "Too large", 429: "Too many failed logins (see Retry-After)",
            421: "The Host header does not name this gateway (loopback, its address, web.allowed_hosts): "
                 "refused against DNS rebinding"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": _ref("Error")}}}
            for c in (401, 421, *codes)}


_LIMIT = {"name": "limit", "in": "query", "required": False,
          "schema": {"type": "integer", "minimum": 1, "maximum": 500}}
_DEVICE_ID = {"name": "id", "in": "path", "required": True,
              "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}}
_CSRF = {"name": "X-CSRF-Token", "in": "header", "required": True,
         "description": "the fg_csrf cookie's value (or the session's token); not needed with a bearer token",
         "schema": {"type": "string"}}
_SSE = {"200": {"description": "text/event-stream: a first document at once, then one per second",
                "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


def openapi_spec() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fieldgate status API", "version": __version__,
            "description": "What the gateway's status page shows, as JSON. Without web.password only clients "
                           "on the gateway itself are served; with it, log in (session cookie) or send "
                           "`Authorization: Bearer <password>`. State-changing requests from a browser send "
                           "the CSRF token in `X-CSRF-Token`. Timestamps are UTC.",
        },
        "servers": [{"url": "/"}],
        "paths": {
            "/api/v1/status": {"get": {"summary": "Overview: gateway, clock, uplink, buffer, CPU and memory",
                                       "operationId": "getStatus", "responses": {**_ok(_ref("Status")), **_errors()}}},
            "/api/v1/devices": {"get": {
                "summary": "Every device: state, last reading, errors, poll statistics, latest values",
                "operationId": "listDevices",
                "responses": {**_ok(_obj({"devices": {"type": "array", "items": _ref("Device")}})), **_errors()}}},
            "/api/v1/devices/{id}": {"get": {
                "summary": "One device with configuration, profile points and its recent events",
                "operationId": "getDevice", "parameters": [_DEVICE_ID],
                "responses": {**_ok(_ref("DeviceDetail")), **_errors(404)}}},
            "/api/v1/devices/{id}/commands": {
                "get": {
                    "summary": "Whether the device takes commands from the local API, its writable points (range, "
                               "current value) and its recent commands with their results",
                    "operationId": "getDeviceCommands", "parameters": [_DEVICE_ID],
                    "responses": {**_ok(_ref("Commands")), **_errors(404)}},
                "post": {
                    "summary": "Send a command (fieldgate.command/1) to the device, as the MQTT command topic "
                               "does; answers its result. Needs commands.enabled, the device in commands.allow "
                               "and web.commands",
                    "operationId": "sendCommand", "parameters": [_DEVICE_ID, _CSRF],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "description": "a fieldgate.command/1 message; a bad one is answered "
                                                         "with a rejected result"}}}},
                    "responses": {**_ok(_COMMAND_RESULT, "The command's result (also for rejected ones)"),
                                  **_errors(400, 403, 404, 409, 413)}}},
            "/api/v1/devices/{id}/stream": {"get": {
                "summary": "Live values of one device (Server-Sent Events, event `device`)",
                "operationId": "streamDevice", "parameters": [_DEVICE_ID], "responses": {**_SSE, **_errors(404)}}},
            "/api/v1/stream": {"get": {
                "summary": "Live overview and devices (Server-Sent Events, event `live`)",
                "operationId": "streamAll", "responses": {**_SSE, **_errors()}}},
            "/api/v1/devices/{id}/history": {"get": {
                "summary": "A device's history: its readings of the hour, 15-minute buckets of the day, state "
                           "changes (kept in memory, bounded by web.history_max_bytes)",
                "operationId": "getDeviceHistory",
                "parameters": [_DEVICE_ID, _SINCE, {"name": "metric", "in": "query", "required": False,
                                                    "description": "one metric (default: all of the device)",
                                                    "schema": {"type": "string"}}],
                "responses": {**_ok(_obj({"device": {"type": "string"}, "now": {"type": "number"},
                                          "since": {"type": "number"},
                                          "metrics": {"type": "array", "items": _ref("MetricHistory")},
                                          "states": {"type": "array", "items": _STATE_CHANGE}})),
                              **_errors(400, 404)}}},
            "/api/v1/history": {"get": {
                "summary": "Buffer depth, publish and ack rates (once a second, an hour) and every device's state "
                           "changes; what the history holds",
                "operationId": "getHistory", "parameters": [_SINCE],
                "responses": {**_ok(_obj({
                    "now": {"type": "number"}, "since": {"type": "number"},
                    "gateway": _obj({k: _SERIES for k in ("buffer_depth", "publish_rate", "ack_rate")}),
                    "states": {"type": "object", "additionalProperties": {"type": "array", "items": _STATE_CHANGE}},
                    "memory": _obj({"max_bytes": {"type": "integer"}, "allocated_bytes": {"type": "integer"},
                                    "series": {"type": "integer"}, "refused_series": {"type": "integer"}}),
                })), **_errors(400)}}},
            "/api/v1/quality": {"get": {
                "summary": "Data quality per device, the worst first: completeness over the hour and the day, "
                           "bad and uncertain readings by reason, stale points, clock-unsynced readings",
                "operationId": "getQuality",
                "responses": {**_ok(_obj({"now": {"type": "number"},
                                          "devices": {"type": "array", "items": _ref("Quality")}})), **_errors()}}},
            "/api/v1/events": {"get": {
                "summary": "Recent events (device state changes, reloads, clock, buffer drops), newest first",
                "operationId": "listEvents",
                "parameters": [_LIMIT, {"name": "device", "in": "query", "required": False,
                                        "schema": {"type": "string"}}],
                "responses": {**_ok(_obj({"events": {"type": "array", "items": _ref("Event")}})), **_errors(400)}}},
            "/api/v1/logs": {"get": {
                "summary": "Recent log lines, newest first (secrets removed)", "operationId": "listLogs",
                "parameters": [_LIMIT, {"name": "level", "in": "query", "required": False, "schema": {
                    "type": "string", "enum": ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]}}],
                "responses": {**_ok(_obj({"installed": {"type": "boolean"}, "lines": {"type": "array", "items": _obj({
                    "id": {"type": "integer"}, "ts": _TS, "level": {"type": "string"},
                    "logger": {"type": "string"}, "message": {"type": "string"}})}})), **_errors(400)}}},
            "/api/v1/profile-check": {"post": {
                "summary": "Validate a device profile: the same file:line:col errors as `fieldgate validate`",
                "operationId": "checkProfile", "parameters": [_CSRF],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["text"],
                    "properties": {"text": {"type": "string", "description": "the profile YAML"},
                                   "filename": {"type": ["string", "null"],
                                                "description": "shown in the errors; default pasted.yaml"}}}}}},
                "responses": {**_ok(_ref("CheckResult")), **_errors(400, 403, 413)}}},
            "/api/v1/reload": {"post": {
                "summary": "Re-read the configuration file (as SIGHUP); a bad one is refused and logged",
                "operationId": "reload", "parameters": [_CSRF],
                "responses": {**_ok(_obj({
                    "requested": {"type": "boolean"},
                    "result": {"type": "string", "enum": ["applied", "refused", "requested"],
                               "description": "requested: the gateway did not say (yet) whether it applied it"},
                    "changes": _obj({k: {"type": "array", "items": {"type": "string"}}
                                     for k in ("added", "changed", "removed")}),
                    "warnings": {"type": "array", "items": {"type": "string"}},
                    "errors": {"type": "array", "items": {"type": "string"}},
                }, ["requested", "result"]), "Reload requested", "202"),
                              **_errors(403, 409)}}},
            "/api/v1/session": {"get": {
                "summary": "Whether a login is needed; the CSRF token for this browser (no login needed)",
                "operationId": "getSession", "security": [],
                "responses": _ok(_obj({"auth_required": {"type": "boolean"}, "authenticated": {"type": "boolean"},
                                       "csrf_token": {"type": "string"}}))}},
            "/api/v1/login": {"post": {
                "summary": "Log in with the status page password; sets an HttpOnly session cookie",
                "operationId": "login", "security": [], "parameters": [_CSRF],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["password"], "properties": {"password": {"type": "string"}}}}}},
                "responses": {**_ok(_obj({"authenticated": {"type": "boolean"}, "csrf_token": {"type": "string"}})),
                              **_errors(400, 403, 409, 429)}}},
            "/api/v1/logout": {"post": {
                "summary": "End the session", "operationId": "logout", "parameters": [_CSRF],
                "responses": {**_ok(_obj({"authenticated": {"type": "boolean"}})), **_errors(403)}}},
            "/api/v1/openapi.json": {"get": {"summary": "This document", "operationId": "getOpenapi",
                                             "responses": {**_ok({"type": "object"}), **_errors()}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics: device polls, errors, latency; buffer depth, drops; uplink",
                "operationId": "getMetrics",
                "responses": {"200": {"description": "Prometheus text format 0.0.4",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}, **_errors()}}},
        },
        "components": {
            "schemas": {"Error": _ERROR, "Metric": _METRIC, "Device": _DEVICE, "DeviceDetail": _DEVICE_DETAIL,
                        "Event": _EVENT, "Uplink": _UPLINK, "Buffer": _BUFFER, "Status": _STATUS,
                        "CheckResult": _CHECK_RESULT, "MetricHistory": _METRIC_HISTORY, "Quality": _QUALITY,
                        "Commands": _COMMANDS},
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "fg_session"},
                "bearer": {"type": "http", "scheme": "bearer", "description": "the status page password"},
            },
        },
        "security": [{"session": []}, {"bearer": []}, {}],
    }
