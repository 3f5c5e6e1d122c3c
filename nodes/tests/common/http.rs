//! Blocking HTTP for the tests that talk JSON to a node's API (authorities, directories): a
//! current-thread runtime per call, so a test needs no async of its own.

/// A current-thread Tokio runtime for one blocking call.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// POSTs JSON `body` to `url` + `path` from `http`; the status and the answer's bytes.
pub fn post_with(http: &reqwest::Client, url: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    rt().block_on(async {
        let response = http
            .post(format!("{url}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap().to_vec())
    })
}

/// POSTs JSON `body` to `url` + `path`; the status and the answer as text.
pub fn post(url: &str, path: &str, body: Vec<u8>) -> (u16, String) {
    let (status, bytes) = post_with(&reqwest::Client::new(), url, path, body);
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// GETs `url` + `path`; the status and the answer as text.
pub fn get(url: &str, path: &str) -> (u16, String) {
    rt().block_on(async {
        let response = reqwest::get(format!("{url}{path}")).await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    })
}
