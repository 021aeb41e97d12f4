// Starts ReDoc on /redoc. The style nonce comes from a data- attribute: browsers hide a
// nonce="" attribute from scripts once the page has a Content-Security-Policy.
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const container = document.getElementById("redoc");
  Redoc.init(container.dataset.openapiUrl, { nonce: container.dataset.styleNonce, disableSearch: true }, container);
});
