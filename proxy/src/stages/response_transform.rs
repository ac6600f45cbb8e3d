//! Response header changes (including a Deprecated route's lifecycle headers).

use http::{HeaderName, HeaderValue, response};

use super::headers;

/// Sets, adds and removes response headers.
#[derive(Debug)]
pub struct ResponseTransform {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl ResponseTransform {
    pub fn new(t: &crds::HeaderTransform) -> Self {
        ResponseTransform {
            set: headers::parse(&t.set_headers),
            add: headers::parse(&t.add_headers),
            remove: headers::names(&t.remove_headers),
        }
    }
}

impl ResponseTransform {
    pub fn on_response(&self, res: &mut response::Parts) {
        headers::apply(&mut res.headers, &self.set, &self.add, &self.remove);
    }
}
