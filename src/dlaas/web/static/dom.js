// dlaas page: DOM helpers, the screen-reader announcer and the page notice.

export const $ = (selector, root = document) => root.querySelector(selector);

export function cloneTemplate(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function announce(text) {
  const region = $("#announcer");
  region.textContent = "";
  // A fresh text node after a tick makes screen readers read repeated messages too.
  window.setTimeout(() => {
    region.textContent = text;
  }, 50);
}

export function showNotice(text) {
  const notice = $("#notice");
  notice.textContent = text;
  notice.hidden = false;
}

export function hideNotice() {
  $("#notice").hidden = true;
}
