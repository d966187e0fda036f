//! The store conformance suite against the S3 store on s3s-fs, a second,
//! independent S3 server (scripts/s3s.sh up). Each case gets a fresh
//! bucket of its own, so cases run in parallel.

mod conformance;
mod s3_common;

use std::sync::Arc;

use imagefs::store::Store;

macro_rules! s3s_store {
    () => {
        s3_common::conformance_store(s3_common::s3s(), "imagefs-s3s", test_name!())
    };
}

conformance_tests!(s3s_store!());

// ---- https with the store's CA file (rustls), through a TLS proxy -------

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A TLS-terminating proxy (Python's ssl) in front of s3s-fs, with a
/// certificate for `localhost` signed by a CA of its own; killed on drop.
struct TlsProxy {
    child: Child,
    port: u16,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tls_proxy(upstream: &str) -> TlsProxy {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=imagefs test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
        ],
    );
    std::fs::write(d.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "srv.pem",
        ],
    );
    let up = upstream.trim_start_matches("http://");
    let (host, port) = up.rsplit_once(':').unwrap();
    let script = format!(
        "import asyncio, ssl, sys\n\
         ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)\n\
         ctx.load_cert_chain('srv.pem', 'srv.key')\n\
         async def pipe(r, w):\n\
         \x20   try:\n\
         \x20       while (b := await r.read(1 << 16)):\n\
         \x20           w.write(b); await w.drain()\n\
         \x20   except Exception: pass\n\
         \x20   finally: w.close()\n\
         async def handle(r, w):\n\
         \x20   ur, uw = await asyncio.open_connection('{host}', {port})\n\
         \x20   await asyncio.gather(pipe(r, uw), pipe(ur, w))\n\
         async def main():\n\
         \x20   s = await asyncio.start_server(handle, '127.0.0.1', 0, ssl=ctx)\n\
         \x20   print(s.sockets[0].getsockname()[1], flush=True)\n\
         \x20   await s.serve_forever()\n\
         asyncio.run(main())\n"
    );
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .current_dir(d)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("proxy port");
    TlsProxy {
        child,
        port,
        ca: d.join("ca.pem"),
        _dir: dir,
    }
}

/// https:// endpoints go through rustls: with the CA file in `cacert` the
/// store works, without it the server's certificate is refused (EIO).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_cacert() {
    use imagefs::store::s3::S3Store;
    use imagefs::store::StoreError;
    let server = s3_common::s3s();
    let s2 = server.clone();
    tokio::task::spawn_blocking(move || s3_common::fresh_bucket(&s2, "imagefs-s3s-https"))
        .await
        .unwrap();
    let _guard = s3_common::BucketGuard {
        server: server.clone(),
        bucket: "imagefs-s3s-https".into(),
    };
    let proxy = tls_proxy(&server.endpoint);
    let mut cfg = s3_common::config(&server, "imagefs-s3s-https");
    cfg.host = format!("https://localhost:{}", proxy.port);
    let untrusted: Arc<dyn Store> = Arc::new(S3Store::open("s3", &cfg).unwrap());
    let e = untrusted.statfs().await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains("certificate"), "{e}");
    cfg.cacert = Some(proxy.ca.clone());
    let store: Arc<dyn Store> = Arc::new(S3Store::open("s3", &cfg).unwrap());
    store.statfs().await.unwrap();
    let bytes = conformance::data((6 << 20) + 7, 9);
    conformance::put(&store, "tls-img", &bytes).await;
    assert_eq!(conformance::get(&store, "tls-img").await, bytes);
    assert_eq!(
        store.location("tls-img"),
        format!(
            "s3+https://localhost:{}/imagefs-s3s-https/tls-img",
            proxy.port
        )
    );
}
