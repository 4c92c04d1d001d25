-- The request of every load run: POST /response/single with a valid JSON body
-- (the Python peers of peers/python send it too).
wrk.method = "POST"
wrk.body = '{"email":"bench@example.com","password":"s3cret"}'
wrk.headers["Content-Type"] = "application/json"
