// Starts Swagger UI (served from the swagger-ui-bundle package) on the service's OpenAPI description.
"use strict";
(function () {
  const el = document.getElementById("swagger-ui");
  if (!el || !window.SwaggerUIBundle) return;
  window.SwaggerUIBundle({ url: el.dataset.spec, dom_id: "#swagger-ui", deepLinking: true });
})();
