//! The request head of a scrape, read by `httparse` within fixed bounds. Pure (no sockets, no
//! runtime): the fuzz target `metrics_head` calls [`parse_head`].

/// The longest request head read (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// The most headers in a request head.
pub const MAX_HEADERS: usize = 64;

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// Not a whole head yet.
    Incomplete,
    /// `GET /metrics` (with or without a query).
    Metrics,
    /// Another path.
    NotFound,
    /// `/metrics` with another method than GET.
    MethodNotAllowed,
    /// A head over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] headers.
    TooLarge,
    /// Not an HTTP/1.x request.
    Bad,
}

/// Reads what the request head in `buf` asks for. Pure and bounded: [`MAX_HEADERS`] headers,
/// parsed by `httparse`; a fuzz target calls it.
pub fn parse_head(buf: &[u8]) -> Asked {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Asked::TooLarge,
        Ok(httparse::Status::Partial) => Asked::Incomplete,
        Ok(httparse::Status::Complete(length)) if length > MAX_HEAD => Asked::TooLarge,
        Ok(httparse::Status::Complete(_)) => {
            let path = request.path.unwrap_or_default();
            let path = path.split_once('?').map_or(path, |(path, _)| path);
            match (request.method, path) {
                (Some("GET"), "/metrics") => Asked::Metrics,
                (_, "/metrics") => Asked::MethodNotAllowed,
                _ => Asked::NotFound,
            }
        }
        Err(httparse::Error::TooManyHeaders) => Asked::TooLarge,
        Err(_) => Asked::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Asked::Metrics);
        assert_eq!(parse_head(b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n"), Asked::Metrics);
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), Asked::Incomplete);
        assert_eq!(parse_head(b""), Asked::Incomplete);
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n\r\n"), Asked::NotFound);
        assert_eq!(parse_head(b"GET /metricsx HTTP/1.1\r\n\r\n"), Asked::NotFound);
        assert_eq!(parse_head(b"POST /metrics HTTP/1.1\r\n\r\n"), Asked::MethodNotAllowed);
        assert_eq!(parse_head(b"\x16\x03\x01\x02\x00"), Asked::Bad);
        let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many), Asked::TooLarge);
        let mut partial = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        partial.resize(MAX_HEAD, b'a');
        assert_eq!(parse_head(&partial), Asked::TooLarge);
    }
}
