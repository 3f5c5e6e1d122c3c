//! `lethe sink`: listens, decodes Nym frames, appends one line per packet to a file:
//! `<unix time in ms> <frame version> <packet as hex>`. A test helper, and a stand-in for a
//! gateway at the end of a chain.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use lethe_crypto::framing::{FrameDecoder, FramingVersion};

use crate::keyfile::hex;

pub fn run(listen: SocketAddr, out: PathBuf) -> Result<(), String> {
    let listener = TcpListener::bind(listen).map_err(|e| format!("{listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let file = Arc::new(Mutex::new(file));
    println!("listen={local}");
    let _ = std::io::stdout().flush();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let file = file.clone();
        std::thread::spawn(move || record(stream, &file));
    }
    Ok(())
}

/// Reads a blocking `stream` into `buffer` until it closes or fails, `stop` is set or
/// `on_bytes` breaks, handing `on_bytes` each read's bytes. A read that times out (the
/// caller's read timeout, which bounds how late `stop` is seen) or is interrupted is retried.
/// The read loop of the stand-in final hops that decode frames off TCP: this sink, loadgen's
/// stand-in gateway, and test listeners.
pub fn read_until_stopped(
    stream: &mut impl Read,
    buffer: &mut [u8],
    stop: &AtomicBool,
    mut on_bytes: impl FnMut(&[u8]) -> ControlFlow<()>,
) {
    while !stop.load(Ordering::Relaxed) {
        let n = match stream.read(buffer) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        if on_bytes(buffer.get(..n).unwrap_or_default()).is_break() {
            return;
        }
    }
}

fn record(mut stream: TcpStream, file: &Mutex<std::fs::File>) {
    let mut decoder = FrameDecoder::new();
    let mut buffer = vec![0u8; crate::limits::SINK_READ_BUFFER_BYTES];
    // The sink runs until its process is stopped.
    let never = AtomicBool::new(false);
    read_until_stopped(&mut stream, &mut buffer, &never, |bytes| {
        let mut lines = String::new();
        let result = decoder.feed(bytes, |frame| {
            if let Ok(frame) = frame {
                let ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                let version = match frame.header.version {
                    FramingVersion::V7 => 7,
                    FramingVersion::V8 => 8,
                };
                lines.push_str(&format!("{ms} {version} {}\n", hex(frame.packet)));
            }
        });
        if let Ok(mut file) = file.lock() {
            let _ = file.write_all(lines.as_bytes());
            let _ = file.flush();
        }
        if result.is_err() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
}
