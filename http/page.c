/*
 * page.c: GET / (DESIGN.md section 5), a one-page status view for people.
 *
 * One static HTML document with its CSS and JavaScript inline and nothing
 * fetched from elsewhere (a Content-Security-Policy says so: the page may
 * only talk to this node). The script polls GET /v1/status once a second
 * and renders: the role, epoch and history; the positions (applied,
 * received, the primary's seq); readiness and the lag; on a primary one
 * row per standby (state, seqs, lag, last error); and a lag chart of the
 * last five minutes (kept in the browser, one point a second, one line per
 * standby on a primary). Like /v1/status it needs no token.
 *
 * What a test can read in the rendered DOM (tests/cli/page_test.sh): the
 * element #role holds the role, #applied the applied seq, each standby is
 * a <tr class="standby"> whose cells are url, state, sent, received,
 * applied, lag frames, lag seconds, last error, and #updated says when the
 * status last arrived (or #error why not).
 */
#include <string.h>

#include "server_internal.h"

static const char page[] =
    "<!DOCTYPE html>\n"
    "<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>loomship</title>\n"
    "<style>\n"
    "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\n"
    "h1{font-size:1.3em;margin:0 0 .5em}h2{font-size:1.05em;margin:1.2em 0 .4em}\n"
    "table{border-collapse:collapse;background:#fff}\n"
    "td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-variant-numeric:tabular-nums}\n"
    "th{background:#f0f0f0}.ok{color:#176f2c}.bad{color:#b3261e;font-weight:600}\n"
    "#chart{background:#fff;border:1px solid #ddd}#error{color:#b3261e}\n"
    "small{color:#666}\n"
    "</style></head><body>\n"
    "<h1>loomship <span id=\"role\">?</span> <small id=\"version\"></small></h1>\n"
    "<table><tbody>\n"
    "<tr><th>epoch</th><td id=\"epoch\"></td><th>history</th><td id=\"history\"></td></tr>\n"
    "<tr><th>applied</th><td id=\"applied\"></td><th>at</th><td id=\"applied_at\"></td></tr>\n"
    "<tr><th>received</th><td id=\"received\"></td><th>primary seq</th><td id=\"primary_seq\"></td></tr>\n"
    "<tr><th>ready</th><td id=\"ready\"></td><th>lag</th><td id=\"lag\"></td></tr>\n"
    "<tr><th>state</th><td id=\"state\" colspan=\"3\"></td></tr>\n"
    "</tbody></table>\n"
    "<div id=\"standbys_box\" hidden><h2>Standbys</h2>\n"
    "<table><thead><tr><th>url</th><th>state</th><th>sent</th><th>received</th>"
    "<th>applied</th><th>lag frames</th><th>lag s</th><th>last error</th></tr></thead>\n"
    "<tbody id=\"standbys\"></tbody></table></div>\n"
    "<h2>Lag, seconds, last 5 minutes</h2>\n"
    "<svg id=\"chart\" width=\"640\" height=\"180\" viewBox=\"0 0 640 180\"></svg>\n"
    "<p><small>Updated <span id=\"updated\">never</span>. <span id=\"error\"></span> "
    "Data: <a href=\"v1/status\">/v1/status</a>, <a href=\"metrics\">/metrics</a>.</small></p>\n"
    "<script>\n"
    "'use strict';\n"
    "const KEEP = 300, W = 640, H = 180, PAD = 30;\n"
    "const COLORS = ['#1f77b4','#d62728','#2ca02c','#9467bd','#ff7f0e','#8c564b'];\n"
    "const series = new Map(); /* name -> [[time, lag seconds]] */\n"
    "function $(id) { return document.getElementById(id); }\n"
    "function text(id, v) { $(id).textContent = v === undefined || v === null ? '-' : String(v); }\n"
    "function lagText(l) { return l ? l.frames + ' frames, ' + l.bytes + ' bytes, ' +\n"
    "  Number(l.seconds).toFixed(3) + ' s' : '-'; }\n"
    "function note(name, t, v) {\n"
    "  if (!series.has(name)) series.set(name, []);\n"
    "  const s = series.get(name); s.push([t, v]);\n"
    "  while (s.length && s[0][0] < t - KEEP) s.shift();\n"
    "}\n"
    "function cell(row, v, cls) { const td = row.insertCell(); td.textContent =\n"
    "  v === undefined || v === null ? '-' : String(v); if (cls) td.className = cls; }\n"
    "function standbys(list) {\n"
    "  const body = $('standbys'); body.replaceChildren();\n"
    "  for (const s of list) {\n"
    "    const row = body.insertRow(); row.className = 'standby'; row.dataset.url = s.url;\n"
    "    cell(row, s.url); cell(row, s.state, s.state === 'streaming' ? 'ok' : 'bad');\n"
    "    cell(row, s.sent_seq); cell(row, s.received_seq); cell(row, s.applied_seq);\n"
    "    cell(row, s.lag && s.lag.frames); cell(row, s.lag && Number(s.lag.seconds).toFixed(3));\n"
    "    cell(row, s.last_error);\n"
    "  }\n"
    "}\n"
    "function chart(now) {\n"
    "  const svg = $('chart'); let max = 0.001;\n"
    "  for (const s of series.values()) for (const p of s) max = Math.max(max, p[1]);\n"
    "  const x = t => PAD + (W - PAD - 5) * (1 - (now - t) / KEEP);\n"
    "  const y = v => H - 15 - (H - 25) * v / max;\n"
    "  let out = '<line x1=\"' + PAD + '\" y1=\"' + (H - 15) + '\" x2=\"' + W + '\" y2=\"' +\n"
    "    (H - 15) + '\" stroke=\"#aaa\"/><text x=\"2\" y=\"12\" font-size=\"11\">' +\n"
    "    max.toFixed(3) + '</text><text x=\"2\" y=\"' + (H - 17) + '\" font-size=\"11\">0</text>';\n"
    "  let i = 0;\n"
    "  for (const [name, s] of series) {\n"
    "    const c = COLORS[i % COLORS.length];\n"
    "    const pts = s.map(p => x(p[0]).toFixed(1) + ',' + y(p[1]).toFixed(1)).join(' ');\n"
    "    out += '<polyline class=\"lag\" fill=\"none\" stroke=\"' + c + '\" points=\"' + pts + '\"/>';\n"
    "    const label = document.createElement('span'); label.textContent = name;\n"
    "    out += '<text x=\"' + (PAD + 5) + '\" y=\"' + (14 + 13 * i) + '\" font-size=\"11\" fill=\"' +\n"
    "      c + '\">' + label.innerHTML + '</text>';\n"
    "    i++;\n"
    "  }\n"
    "  svg.innerHTML = out;\n"
    "}\n"
    "function render(d) {\n"
    "  const now = Date.now() / 1000;\n"
    "  text('role', d.role); text('version', d.version); text('epoch', d.epoch);\n"
    "  text('history', d.history);\n"
    "  text('applied', d.applied && d.applied.seq); text('applied_at', d.applied && d.applied.at);\n"
    "  text('received', d.received ? d.received.seq : (d.applied && d.applied.seq));\n"
    "  text('primary_seq', d.primary_seq);\n"
    "  text('ready', d.ready ? 'yes' : 'no'); $('ready').className = d.ready ? 'ok' : 'bad';\n"
    "  const states = [];\n"
    "  if (d.fenced) states.push('FENCED');\n"
    "  if (d.diverged) states.push('diverged: ' + d.diverged.reason);\n"
    "  if (d.sync && d.sync.degraded) states.push('sync degraded');\n"
    "  if (d.last_apply_error) states.push('apply error: ' + d.last_apply_error);\n"
    "  if (d.integrity && d.integrity.state !== 'ok') states.push('integrity ' + d.integrity.state);\n"
    "  text('state', states.length ? states.join('; ') : 'ok');\n"
    "  $('state').className = states.length ? 'bad' : 'ok';\n"
    "  if (Array.isArray(d.standbys)) {\n"
    "    $('standbys_box').hidden = false; standbys(d.standbys);\n"
    "    let worst = 0;\n"
    "    for (const s of d.standbys) { const v = s.lag ? Number(s.lag.seconds) : 0;\n"
    "      worst = Math.max(worst, v); note(s.url, now, v); }\n"
    "    text('lag', 'largest standby lag ' + worst.toFixed(3) + ' s');\n"
    "  } else {\n"
    "    text('lag', lagText(d.lag)); note('lag', now, d.lag ? Number(d.lag.seconds) : 0);\n"
    "  }\n"
    "  chart(now);\n"
    "  text('updated', new Date().toISOString()); text('error', '');\n"
    "}\n"
    "async function poll() {\n"
    "  try {\n"
    "    const r = await fetch('v1/status', {cache: 'no-store'});\n"
    "    if (!r.ok) throw new Error('HTTP ' + r.status);\n"
    "    render(await r.json());\n"
    "  } catch (e) { text('error', 'status unavailable: ' + e.message); }\n"
    "  setTimeout(poll, 1000);\n"
    "}\n"
    "poll();\n"
    "</script></body></html>\n";

int http_answer_page(http_server *s, struct MHD_Connection *conn)
{
  struct MHD_Response *resp = MHD_create_response_from_buffer(
      sizeof page - 1, (void *)page, MHD_RESPMEM_PERSISTENT);
  if (!resp)
    return MHD_NO;
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
  MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  /* Nothing from elsewhere: inline style and script, requests to this node. */
  MHD_add_response_header(resp, "Content-Security-Policy",
                          "default-src 'none'; script-src 'unsafe-inline'; "
                          "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; "
                          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
  MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
  enum MHD_Result r = MHD_queue_response(conn, MHD_HTTP_OK, resp);
  MHD_destroy_response(resp);
  http_server_count(s, HTTP_EP_PAGE, MHD_HTTP_OK);
  return r;
}
