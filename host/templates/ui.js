// wmr web UI: live pages. A page whose <main id="live"> has data-poll="on"
// fetches itself again every second and swaps in the new <main> (rendered,
// and escaped, by the server): no client-side templates. Polling stops when
// the new page says data-poll="off" (a finished job), and a page whose
// session has gone (a redirect to /login) is left as it is.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || live.dataset.poll !== "on") return;
  var updates = 0;
  var busy = false;
  var timer = setInterval(refresh, 1000);
  function refresh() {
    if (busy) return;
    busy = true;
    fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" }, cache: "no-store" })
      .then(function (r) {
        if (r.redirected || !r.ok) throw new Error("status " + r.status);
        return r.text();
      })
      .then(function (html) {
        var next = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        if (!next) return;
        live.replaceChildren.apply(live, Array.from(next.childNodes));
        live.dataset.poll = next.dataset.poll || "off";
        live.dataset.updates = String(++updates);
        if (live.dataset.poll !== "on") clearInterval(timer);
      })
      .catch(function () { /* the next tick tries again */ })
      .finally(function () { busy = false; });
  }
})();
