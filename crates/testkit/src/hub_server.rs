//! A tiny HuggingFace hub for tests: an HTTP/1.1 server on 127.0.0.1 that speaks the hub's file protocol
//! (`/{owner}/{name}/resolve/{revision}/{file}`, range requests, `etag`/`x-repo-commit`, gated repos), so that
//! downloads are tested without the network (point `HF_ENDPOINT` or `HubOptions::with_endpoint` at
//! [`HubServer::endpoint`]).

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::Fixture;

/// The commit every test repo is at.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// The files of `fixtures/tiny-opt` a model directory has (the reference tensors are the fixture's own).
pub const TINY_OPT_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
];

#[derive(Clone, Debug)]
pub struct HubRepo {
    /// The commit every revision resolves to.
    pub commit: String,
    /// Branches and tags that resolve to `commit`.
    pub revisions: Vec<String>,
    /// File name -> contents.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl HubRepo {
    /// A repo at [`COMMIT`] on `main` with these files.
    pub fn new(files: BTreeMap<String, Vec<u8>>) -> Self {
        Self {
            commit: COMMIT.to_string(),
            revisions: vec!["main".to_string()],
            files,
        }
    }

    /// A repo with the files `names` of a folder.
    pub fn from_dir(dir: &Path, names: &[&str]) -> Self {
        Self::new(
            names
                .iter()
                .map(|name| (name.to_string(), std::fs::read(dir.join(name)).unwrap()))
                .collect(),
        )
    }

    /// `fixtures/tiny-opt` as a hub repo.
    pub fn tiny_opt() -> Self {
        Self::from_dir(Fixture::open("tiny-opt").dir(), TINY_OPT_FILES)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `owner/name`, the revision and the file, for resolve URLs; else the raw target.
    pub path: String,
    /// The `Range` header.
    pub range: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
}

impl Request {
    /// hf-hub asks for `bytes=0-0` first (size, etag and commit), then downloads with `bytes=<from>-`.
    pub fn is_metadata(&self) -> bool {
        self.range.as_deref() == Some("bytes=0-0")
    }

    /// The file asked for.
    pub fn file(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or_default()
    }
}

#[derive(Debug)]
struct State {
    repos: BTreeMap<String, HubRepo>,
    /// A token the server requires (`Authorization: Bearer <token>`), as for a gated repo.
    token: Option<String>,
    log: Vec<Request>,
}

/// An HTTP/1.1 server on 127.0.0.1 with the hub's resolve endpoint, one request per connection.
#[derive(Debug)]
pub struct HubServer {
    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

impl HubServer {
    /// Serves `repos` (`owner/name` -> repo) on a free port, in background threads.
    pub fn start(repos: Vec<(&str, HubRepo)>) -> Self {
        Self::start_with_token(repos, None)
    }

    /// [`Self::start`], requiring `Authorization: Bearer <token>` when a token is given.
    pub fn start_with_token(repos: Vec<(&str, HubRepo)>, token: Option<&str>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            repos: repos
                .into_iter()
                .map(|(id, repo)| (id.to_string(), repo))
                .collect(),
            token: token.map(str::to_string),
            log: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
        });
        Self { endpoint, state }
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let (method, target) = (
        words.next().unwrap_or_default().to_string(),
        words.next().unwrap_or_default().to_string(),
    );
    let (mut range, mut authorization) = (None, None);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(value.trim().to_string()),
                "authorization" => authorization = Some(value.trim().to_string()),
                _ => {}
            }
        }
    }
    let response = {
        let mut state = state.lock().unwrap();
        state.log.push(Request {
            path: target.clone(),
            range: range.clone(),
            authorization: authorization.clone(),
        });
        respond(
            &state,
            &method,
            &target,
            range.as_deref(),
            authorization.as_deref(),
        )
    };
    let mut stream = stream;
    stream.write_all(&response)?;
    stream.flush()
}

fn respond(
    state: &State,
    method: &str,
    target: &str,
    range: Option<&str>,
    authorization: Option<&str>,
) -> Vec<u8> {
    let error = |status: &str, code: &str| http(status, &[("x-error-code", code.to_string())], b"");
    if method != "GET" {
        return error("405 Method Not Allowed", "");
    }
    if let Some(token) = &state.token
        && authorization != Some(format!("Bearer {token}").as_str())
    {
        return error("401 Unauthorized", "GatedRepo");
    }
    // /{owner}/{name}/resolve/{revision}/{file}; the revision's `/` arrives as %2F.
    let parts: Vec<&str> = target.trim_start_matches('/').splitn(5, '/').collect();
    let [owner, name, "resolve", revision, file] = parts[..] else {
        return error("404 Not Found", "");
    };
    let Some(repo) = state.repos.get(&format!("{owner}/{name}")) else {
        return error("404 Not Found", "RepoNotFound");
    };
    let revision = revision.replace("%2F", "/");
    if revision != repo.commit && !repo.revisions.contains(&revision) {
        return error("404 Not Found", "RevisionNotFound");
    }
    let Some(body) = repo.files.get(file) else {
        return error("404 Not Found", "EntryNotFound");
    };
    let mut hasher = DefaultHasher::new();
    body.hash(&mut hasher);
    let mut headers = vec![
        ("etag", format!("\"{:016x}\"", hasher.finish())),
        ("x-repo-commit", repo.commit.clone()),
        ("accept-ranges", "bytes".to_string()),
    ];
    let len = body.len();
    match range.and_then(|r| r.strip_prefix("bytes=")) {
        Some(spec) => {
            let (from, to) = spec.split_once('-').unwrap_or((spec, ""));
            let from: usize = from.parse().unwrap_or(0);
            let to: usize = to.parse().map_or(len - 1, |t: usize| t.min(len - 1));
            if from > to {
                return error("416 Range Not Satisfiable", "");
            }
            headers.push(("content-range", format!("bytes {from}-{to}/{len}")));
            http("206 Partial Content", &headers, &body[from..=to])
        }
        None => http("200 OK", &headers, body),
    }
}

/// An HTTP/1.1 response with `connection: close`.
pub fn http(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// An endpoint where nothing listens (connections are refused).
pub fn unreachable_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}
