// asyncflow's UI: the pages are complete without this file. It keeps the regions marked
// data-refresh live (every 2 s, re-fetched from that URL and swapped in place; a region
// rendered without data-refresh, like a run that ended, stops there) and shows times in
// the browser's time zone.
"use strict";

const EVERY_MS = 2000;

function localTimes(root) {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const at = new Date(el.getAttribute("datetime"));
    if (!isNaN(at)) {
      el.title = el.textContent;
      el.textContent = at.toLocaleString();
    }
  }
}

function keepLive(region) {
  setTimeout(async () => {
    if (!region.isConnected) return;
    if (document.hidden) return keepLive(region);
    try {
      const answer = await fetch(region.dataset.refresh, { credentials: "same-origin" });
      // Gone, or sent to the login form (the session ended): stop; reloading shows why.
      if (answer.status === 404 || answer.redirected) return;
      if (!answer.ok) return keepLive(region);
      const parsed = document.createElement("template");
      parsed.innerHTML = (await answer.text()).trim();
      const fresh = parsed.content.firstElementChild;
      if (!fresh || fresh.id !== region.id) return keepLive(region);
      localTimes(fresh);
      region.replaceWith(fresh);
      if (fresh.dataset.refresh) keepLive(fresh);
    } catch (_) {
      keepLive(region);  // (the server restarting, say: try again later)
    }
  }, EVERY_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  for (const region of document.querySelectorAll("[data-refresh]")) keepLive(region);
});
