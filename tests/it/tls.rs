//! HTTPS sources behind a private CA: without `tls.ca_file` the certificate is refused, with
//! it the records flow. The server is a minimal HTTPS responder on a certificate for
//! `localhost` signed by the test-only CA in tests/fixtures/tls/.

use std::sync::Arc;

use conflux::pipeline;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::{load, project_with, repo_root};

const BODY: &str = r#"[{"id": "s1", "name": "Anna Berg", "email": "anna@example.com"},
{"id": "s2", "name": "Otto Kranz", "email": "otto@example.com"}]"#;

/// Serves `BODY` over HTTPS to every connection until the test ends; returns the port.
async fn https_server() -> u16 {
    let dir = repo_root().join("tests/fixtures/tls");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A refused handshake is the point of one test: nothing to do then.
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = vec![0u8; 8192];
                let mut read = 0;
                while !request[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut request[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
                    BODY.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

const CONFIG: &str = r#"
[store]
url = "sqlite://.conflux/tls.db"

[feed]
sink = "file"
path = ".conflux/feed.ndjson"

[[job]]
name = "erp"
sync = ["erp"]
"#;

const MAPPING: &str = r#"
entity = "customer"

[fields]
source_id = "id"
name = "name"
email = { path = "email", transforms = ["email"] }
"#;

fn project(port: u16, tls: &str) -> tempfile::TempDir {
    let ca = std::fs::read(repo_root().join("tests/fixtures/tls/ca.pem")).unwrap();
    let connector = format!(
        "kind = \"http\"\nbase_url = \"https://localhost:{port}\"\nretry = {{ max_elapsed = \"1s\" }}\n{tls}\n\n\
         [[stream]]\nname = \"customers\"\npath = \"/customers\"\nmapping = \"erp.customer\"\n"
    );
    project_with(&[
        ("config/tls.toml", CONFIG.as_bytes()),
        ("connectors/erp.toml", connector.as_bytes()),
        ("mappings/erp.customer.toml", MAPPING.as_bytes()),
        ("certs/erp-ca.pem", &ca),
    ])
}

#[tokio::test]
async fn an_https_source_on_a_private_ca_is_refused_without_the_ca_file() {
    let port = https_server().await;
    let project = project(port, "");
    let config = load(project.path(), "config/tls.toml");
    let error = pipeline::run(&config, None).await.unwrap_err().to_string();
    assert!(
        error.contains("connector erp, stream customers")
            && error.to_lowercase().contains("certificate"),
        "{error}"
    );
}

#[tokio::test]
async fn an_https_source_on_a_private_ca_works_with_tls_ca_file() {
    let port = https_server().await;
    let project = project(port, "tls = { ca_file = \"certs/erp-ca.pem\" }");
    let config = load(project.path(), "config/tls.toml");
    let summary = pipeline::run(&config, None).await.unwrap();
    assert_eq!((summary.records_read, summary.profiles_created), (2, 2));
}

#[test]
fn a_missing_ca_file_is_a_validation_error_naming_the_line() {
    let project = project(1, "tls = { ca_file = \"certs/nope.pem\" }");
    let diagnostics = conflux::config::load(&project.path().join("config/tls.toml"))
        .expect_err("a missing CA file does not validate")
        .to_string();
    assert!(
        diagnostics.contains("connectors/erp.toml:4:")
            && diagnostics.contains("tls.ca_file \"certs/nope.pem\" is not a file"),
        "{diagnostics}"
    );
}

#[test]
fn a_ca_file_that_is_not_pem_is_refused_when_the_source_starts() {
    let project = project(1, "tls = { ca_file = \"certs/erp-ca.pem\" }");
    std::fs::write(project.path().join("certs/erp-ca.pem"), "not a certificate").unwrap();
    let config = load(project.path(), "config/tls.toml");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let error = runtime
        .block_on(pipeline::run(&config, None))
        .unwrap_err()
        .to_string();
    assert!(error.contains("erp-ca.pem holds no certificate"), "{error}");
}

#[test]
fn an_amqps_feed_url_validates() {
    let project = project(1, "");
    let config = CONFIG.replace(
        "sink = \"file\"\npath = \".conflux/feed.ndjson\"",
        "sink = \"amqp\"\namqp = { url = \"amqps://app:pw@broker.internal:5671/%2f\", exchange = \"conflux.customers\" }",
    );
    std::fs::write(project.path().join("config/tls.toml"), config).unwrap();
    let config = load(project.path(), "config/tls.toml");
    assert!(matches!(
        config.feed.sink,
        conflux::config::SinkConfig::Amqp { ref url, .. } if url.starts_with("amqps://")
    ));
}

/// lapin's default `rustls` feature makes `amqps://` a TLS connection verified against the
/// system roots: a broker on a certificate from an unknown CA is refused during the handshake.
#[tokio::test]
async fn an_amqps_connection_speaks_tls_and_verifies_the_certificate() {
    let port = https_server().await;
    let sink = conflux::sink::amqp::AmqpSink::new(
        format!("amqps://guest:guest@localhost:{port}/%2f"),
        "conflux.customers".into(),
    );
    let error = tokio::time::timeout(std::time::Duration::from_secs(30), sink.probe())
        .await
        .expect("the probe ends")
        .unwrap_err()
        .to_string();
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
}
