// A run's page while the run is in flight: each step's section is replaced as its event arrives,
// and the whole page once the run has ended. HTML comes only as the server rendered (and escaped) it.
"use strict";

(() => {
  const run = document.body.dataset.run;
  const article = document.querySelector("article.rationale");
  if (!run || !article) return;
  const events = new EventSource(`/v1/runs/${encodeURIComponent(run)}/events`);
  events.addEventListener("step", (ev) => {
    const data = JSON.parse(ev.data);
    const old = article.querySelector(`section.step[id="${CSS.escape(data.step.id)}"]`);
    if (!old) return;
    const holder = document.createElement("div");
    holder.innerHTML = data.html;
    old.replaceWith(holder.firstElementChild);
  });
  events.addEventListener("failure", (ev) => {
    events.close();
    const note = document.createElement("p");
    note.className = "error";
    note.textContent = `${JSON.parse(ev.data).message}: reload the page to see where the run is`;
    article.prepend(note);
  });
  events.addEventListener("run", (ev) => {
    events.close();
    const holder = document.createElement("div");
    holder.innerHTML = JSON.parse(ev.data).html;
    article.replaceWith(holder.firstElementChild);
    document.body.dataset.status = JSON.parse(ev.data).record.status;
    if (location.hash) {
      const target = document.getElementById(location.hash.slice(1));
      if (target) target.scrollIntoView();
    }
  });
})();
