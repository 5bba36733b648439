-- wrk script: POST the body in $KILN_BODY; with $KILN_HEADER_LENGTH, as a binary-extension request.
wrk.method = "POST"
local f = assert(io.open(os.getenv("KILN_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
local n = os.getenv("KILN_HEADER_LENGTH")
if n and n ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = n
end
function response(status, headers, body)
  if status ~= 200 then
    errors = (errors or 0) + 1
  end
end
