//! Between actix-web's types (`http` 0.2) and the `http` 1 types of the
//! framework-neutral parts.

/// An answer of epilogue's own (`http` 1) as actix-web's.
pub(super) fn to_actix(response: http::Response<String>) -> actix_web::HttpResponse {
    let (parts, body) = response.into_parts();
    let status = actix_web::http::StatusCode::from_u16(parts.status.as_u16())
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut answer = actix_web::HttpResponse::build(status);
    for (name, value) in &parts.headers {
        answer.insert_header((name.as_str(), value.as_bytes()));
    }
    answer.body(body)
}

/// actix-web's status (`http` 0.2) as the `http` 1 status the scope reads.
pub(super) fn status(status: actix_web::http::StatusCode) -> http::StatusCode {
    http::StatusCode::from_u16(status.as_u16()).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
}
