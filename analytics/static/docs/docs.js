// GET /docs: Swagger UI rendering this server's own /openapi.json.
window.SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#reference",
  deepLinking: true,
  validatorUrl: null, // the default sends the document to a validator on another host
});
