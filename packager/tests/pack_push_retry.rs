//! Push against a flaky registry: a failed upload is retried from the start
//! (new session, source re-read), still as one monolithic PUT, and the
//! manifest goes last. A tiny in-process registry fails the first PUT of each
//! blob after reading its whole body, then checks the retried body's digest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use kiln::credentials::Credential;
use kiln::image::{self, Descriptor, ImageRef, Manifest};
use kiln::layers::{Compression, Layer, LayerCache, LayerSpec, Source};
use kiln::registry::RegistryClient;
use kiln::sinks::registry::{PushOptions, push};
use kiln::sinks::{Blob, BlobSource, BuiltImage};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;

#[derive(Default)]
struct Flaky {
    log: Vec<String>,
    puts_by_digest: HashMap<String, usize>,
    /// Answer everything with 403, as a registry does for a read-only account.
    deny: bool,
}

async fn serve(listener: TcpListener, state: Arc<Mutex<Flaky>>) {
    let mut next_upload = 0;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            continue;
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap_or(0);
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).await.unwrap_or_default();
        let mut parts = request_line.split_whitespace();
        let (method, uri) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let (status, extra) = {
            let mut s = state.lock().expect("state");
            s.log.push(format!("{method} {uri}"));
            match method.as_str() {
                _ if s.deny => ("403 Forbidden", String::new()),
                "HEAD" => ("404 Not Found", String::new()),
                "POST" => {
                    next_upload += 1;
                    (
                        "202 Accepted",
                        format!("Location: /upload/{next_upload}\r\n"),
                    )
                }
                "PUT" if uri.starts_with("/upload/") => {
                    let digest = uri.split("digest=").nth(1).unwrap_or("").to_string();
                    let attempts = s.puts_by_digest.entry(digest.clone()).or_default();
                    *attempts += 1;
                    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
                    if *attempts == 1 {
                        ("500 Internal Server Error", String::new())
                    } else if actual == digest {
                        ("201 Created", String::new())
                    } else {
                        ("400 Bad Request", String::new())
                    }
                }
                "PUT" => ("201 Created", String::new()),
                _ => ("405 Method Not Allowed", String::new()),
            }
        };
        let response =
            format!("HTTP/1.1 {status}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = write.write_all(response.as_bytes()).await;
    }
}

#[tokio::test]
async fn failed_uploads_restart_from_the_source_as_one_put() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let host = listener.local_addr().expect("addr").to_string();
    let state = Arc::new(Mutex::new(Flaky::default()));
    tokio::spawn(serve(listener, state.clone()));

    let dir = tempfile::tempdir().expect("dir");
    let (built, layer) = image_with_one_layer(dir.path()).await;
    let client = Arc::new(RegistryClient::new(&host, true, Credential::Anonymous).expect("client"));
    let target = ImageRef::parse(&format!("{host}/kiln/retry:1")).expect("ref");
    let opts = PushOptions {
        parallel: 1,
        attempts: 3,
        progress: false,
    };
    let report = push(&built, &target, &client, &opts)
        .await
        .expect("push succeeds on retry");
    assert_eq!(report.uploaded, 2);
    assert_eq!(report.digest, built.manifest_digest);

    let state = state.lock().expect("state");
    let log = &state.log;
    // Per blob: HEAD, POST, failing PUT, then HEAD, POST, PUT again.
    assert_eq!(
        log.iter().filter(|l| l.starts_with("POST")).count(),
        4,
        "{log:?}"
    );
    assert_eq!(
        log.iter().filter(|l| l.starts_with("PUT /upload/")).count(),
        4,
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.starts_with("PATCH")), "{log:?}");
    assert_eq!(state.puts_by_digest.get(&layer.digest), Some(&2));
    assert!(
        log.last()
            .is_some_and(|l| l == "PUT /v2/kiln/retry/manifests/1"),
        "manifest last: {log:?}"
    );
}

/// A one-layer image (3 MiB of weights in a kiln tar layer) ready to push.
async fn image_with_one_layer(dir: &std::path::Path) -> (BuiltImage, Arc<Layer>) {
    let weights = dir.join("weights");
    std::fs::write(&weights, vec![42u8; 3 << 20]).expect("weights");
    let mut spec = LayerSpec::new("weights");
    spec.file(
        "/models/blobs/sha256-x",
        0o644,
        Source::file(&weights).expect("source"),
    )
    .expect("file");
    let layer = Arc::new(
        Layer::build(spec, &LayerCache::new(None), Compression::None)
            .await
            .expect("layer"),
    );
    let config = Bytes::from_static(b"{\"architecture\":\"amd64\",\"os\":\"linux\"}");
    let config_desc = Descriptor::new(
        image::OCI_CONFIG,
        &image::sha256_digest(&config),
        config.len() as u64,
    );
    let layer_desc = Descriptor::new(image::OCI_LAYER_TAR, &layer.digest, layer.size);
    let manifest = Bytes::from(
        Manifest {
            schema_version: 2,
            media_type: Some(image::OCI_MANIFEST.into()),
            config: config_desc.clone(),
            layers: vec![layer_desc.clone()],
            annotations: None,
        }
        .to_bytes(),
    );
    let built = BuiltImage {
        manifest_digest: image::sha256_digest(&manifest),
        manifest,
        manifest_media_type: image::OCI_MANIFEST.into(),
        layers: vec![Blob {
            descriptor: layer_desc,
            source: BlobSource::Local(layer.clone()),
        }],
        config: Blob {
            descriptor: config_desc,
            source: BlobSource::Bytes(config),
        },
    };
    (built, layer)
}

#[tokio::test]
async fn denied_push_is_one_403_line() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let host = listener.local_addr().expect("addr").to_string();
    let state = Arc::new(Mutex::new(Flaky {
        deny: true,
        ..Flaky::default()
    }));
    tokio::spawn(serve(listener, state.clone()));
    let dir = tempfile::tempdir().expect("dir");
    let (built, _) = image_with_one_layer(dir.path()).await;
    let client = Arc::new(RegistryClient::new(&host, true, Credential::Anonymous).expect("client"));
    let target = ImageRef::parse(&format!("{host}/kiln/denied:1")).expect("ref");
    let opts = PushOptions {
        parallel: 2,
        attempts: 3,
        progress: false,
    };
    let err = push(&built, &target, &client, &opts)
        .await
        .expect_err("403 must fail")
        .to_string();
    assert!(
        err.contains("denied push access to kiln/denied (403)"),
        "{err}"
    );
    let log = &state.lock().expect("state").log;
    assert!(
        !log.iter().any(|l| l.contains("/manifests/")),
        "no manifest after a failed push: {log:?}"
    );
    assert!(log.len() <= 2, "403 is not retried: {log:?}");
}
