-- The request of every load run: POST /response/single with a valid JSON body
-- (the same as ../../shared/peers/python/body.lua).
wrk.method = "POST"
wrk.body = '{"email":"bench@example.com","password":"s3cret"}'
wrk.headers["Content-Type"] = "application/json"
