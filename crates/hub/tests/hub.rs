//! `blip2_hub`: hub ids downloaded from a local HTTP server that speaks the hub's file protocol
//! (`/{owner}/{name}/resolve/{revision}/{file}`, range requests, `etag`/`x-repo-commit`), into a temporary HF cache;
//! the cache layout, cache hits without requests, offline mode, the errors, local directories, id parsing and the
//! environment. No test touches the network or the process environment.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use blip2_hub::{self as hub, DownloadProgress, HubError, HubId, HubOptions, ModelSource};
use blip2_testkit::Fixture;
use blip2_testkit::hub_server::{
    COMMIT, HubRepo, HubServer, Request, TINY_OPT_FILES, http, unreachable_endpoint,
};

const OWNER: &str = "tester";

// ------------------------------------------------------------------------------------------------------------
// A tiny hub
// ------------------------------------------------------------------------------------------------------------

/// Options that download from the test server into `cache`, ignoring the process environment.
trait TestOptions {
    fn options(&self, cache: &Path) -> HubOptions;
}

impl TestOptions for HubServer {
    fn options(&self, cache: &Path) -> HubOptions {
        HubOptions::from_env_with(|_| None)
            .with_endpoint(&self.endpoint)
            .with_cache_dir(cache)
    }
}

fn repo_id(name: &str) -> String {
    format!("{OWNER}/{name}")
}

fn snapshot_of(cache: &Path, name: &str, commit: &str) -> PathBuf {
    cache
        .join(format!("models--{OWNER}--{name}"))
        .join("snapshots")
        .join(commit)
}

/// A one-tensor safetensors file.
fn tiny_safetensors(key: &str, value: f32) -> Vec<u8> {
    let mut header =
        format!(r#"{{"{key}":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}}"#).into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&value.to_le_bytes());
    out
}

/// A sharded repo: tiny-opt's config, an index and two one-tensor shards.
fn sharded_repo() -> HubRepo {
    let fixture = Fixture::open("tiny-opt");
    let index = serde_json::json!({
        "metadata": {"total_size": 8},
        "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors",
            "b.weight": "model-00002-of-00002.safetensors",
        }
    });
    HubRepo::new(BTreeMap::from([
        (
            "config.json".to_string(),
            std::fs::read(fixture.dir().join("config.json")).unwrap(),
        ),
        (
            "model.safetensors.index.json".to_string(),
            serde_json::to_vec_pretty(&index).unwrap(),
        ),
        (
            "model-00001-of-00002.safetensors".to_string(),
            tiny_safetensors("a.weight", 1.5),
        ),
        (
            "model-00002-of-00002.safetensors".to_string(),
            tiny_safetensors("b.weight", -2.0),
        ),
    ]))
}

// ------------------------------------------------------------------------------------------------------------
// Downloads and the cache
// ------------------------------------------------------------------------------------------------------------

#[test]
fn downloads_a_model_into_the_hf_cache_layout() {
    let fixture = Fixture::open("tiny-opt");
    let server = HubServer::start(vec![(&repo_id("tiny-opt"), HubRepo::tiny_opt())]);
    let cache = tempfile::tempdir().unwrap();
    let dir = hub::resolve(&repo_id("tiny-opt"), &server.options(cache.path())).unwrap();

    let repo_dir = cache.path().join(format!("models--{OWNER}--tiny-opt"));
    assert_eq!(dir, snapshot_of(cache.path(), "tiny-opt", COMMIT));
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        COMMIT
    );
    // hf-hub writes refs/<commit> for the pinned downloads; huggingface_hub never does, and it is removed.
    assert!(!repo_dir.join("refs").join(COMMIT).exists());
    for file in TINY_OPT_FILES {
        let got = std::fs::read(dir.join(file)).unwrap();
        let want = std::fs::read(fixture.dir().join(file)).unwrap();
        assert!(got == want, "{file} differs from the served file");
        #[cfg(unix)]
        {
            // Snapshots link into blobs/, as huggingface_hub's cache does.
            let meta = std::fs::symlink_metadata(dir.join(file)).unwrap();
            assert!(meta.file_type().is_symlink(), "{file} is not a link");
            let target = std::fs::canonicalize(dir.join(file)).unwrap();
            assert!(target.starts_with(std::fs::canonicalize(repo_dir.join("blobs")).unwrap()));
        }
    }
    // Only the model directory's files; the absent optional file is recorded as huggingface_hub does.
    let mut listed: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, TINY_OPT_FILES);
    assert!(
        repo_dir
            .join(".no_exist")
            .join(COMMIT)
            .join("special_tokens_map.json")
            .is_file()
    );
    // The directory loads.
    let checkpoint = blip2_nn::loader::Checkpoint::open(&dir).unwrap();
    assert!(checkpoint.len() > 10);

    // Requests: a metadata request (`Range: bytes=0-0`) and a download per file, one 404 for the absent file,
    // nothing else (no reference.*, no API calls).
    let requests = server.requests();
    let mut metadata: Vec<&str> = requests
        .iter()
        .filter(|r| r.is_metadata())
        .map(Request::file)
        .collect();
    metadata.sort();
    let mut want: Vec<&str> = TINY_OPT_FILES.to_vec();
    want.push("special_tokens_map.json");
    want.sort();
    assert_eq!(metadata, want);
    let downloads: Vec<&Request> = requests.iter().filter(|r| !r.is_metadata()).collect();
    assert_eq!(downloads.len(), TINY_OPT_FILES.len(), "{downloads:?}");
    assert!(
        downloads
            .iter()
            .all(|r| r.range.as_deref() == Some("bytes=0-"))
    );
    // Files after config.json are fetched at the commit config.json resolved to.
    assert!(requests.iter().all(|r| {
        r.path.contains("/resolve/main/config.json")
            || r.path.contains(&format!("/resolve/{COMMIT}/"))
    }));
    assert!(requests.iter().all(|r| r.authorization.is_none()));

    // A second resolve: the complete snapshot, no request at all.
    let again = hub::resolve(&repo_id("tiny-opt"), &server.options(cache.path())).unwrap();
    assert_eq!(again, dir);
    assert_eq!(server.requests().len(), requests.len());
}

#[test]
fn offline_mode_uses_the_cache_and_says_when_the_model_is_not_there() {
    let server = HubServer::start(vec![(&repo_id("tiny-opt"), HubRepo::tiny_opt())]);
    let cache = tempfile::tempdir().unwrap();
    let offline = server.options(cache.path()).with_offline(true);

    let err = hub::resolve(&repo_id("tiny-opt"), &offline).unwrap_err();
    assert!(matches!(err, HubError::NotCached { .. }), "{err:?}");
    let message = err.to_string();
    for part in [
        "tester/tiny-opt",
        "not in the HF cache",
        "offline",
        "huggingface-cli download tester/tiny-opt",
        "pass the model directory",
    ] {
        assert!(message.contains(part), "`{part}` not in: {message}");
    }
    let err = hub::resolve(&format!("{}@v2", repo_id("tiny-opt")), &offline).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("`tester/tiny-opt` at revision `v2` is not in the HF cache")
            && message.contains("huggingface-cli download tester/tiny-opt --revision v2"),
        "{message}"
    );
    assert!(server.requests().is_empty());

    let dir = hub::resolve(&repo_id("tiny-opt"), &server.options(cache.path())).unwrap();
    let seen = server.requests().len();
    assert_eq!(hub::resolve(&repo_id("tiny-opt"), &offline).unwrap(), dir);
    // Offline, the required files are enough.
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert_eq!(hub::resolve(&repo_id("tiny-opt"), &offline).unwrap(), dir);
    assert_eq!(server.requests().len(), seen);
    // Offline without the weights: not cached.
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let err = hub::resolve(&repo_id("tiny-opt"), &offline).unwrap_err();
    assert!(matches!(err, HubError::NotCached { .. }), "{err:?}");
    assert_eq!(server.requests().len(), seen);
}

#[test]
fn an_incomplete_snapshot_fetches_only_what_is_missing() {
    let server = HubServer::start(vec![(&repo_id("tiny-opt"), HubRepo::tiny_opt())]);
    let cache = tempfile::tempdir().unwrap();
    let options = server.options(cache.path());
    let dir = hub::resolve(&repo_id("tiny-opt"), &options).unwrap();
    let seen = server.requests().len();

    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert_eq!(hub::resolve(&repo_id("tiny-opt"), &options).unwrap(), dir);
    // config.json is always fetched to learn the revision's commit; then only the missing file.
    let mut files: Vec<String> = server.requests()[seen..]
        .iter()
        .map(|r| r.file().to_string())
        .collect();
    files.dedup();
    assert_eq!(files, ["config.json", "tokenizer.json"]);
    assert_eq!(
        std::fs::read(dir.join("tokenizer.json")).unwrap(),
        std::fs::read(Fixture::open("tiny-opt").dir().join("tokenizer.json")).unwrap()
    );
}

#[test]
fn unreachable_hub_uses_the_cache_or_says_it_cannot_download() {
    let cache = tempfile::tempdir().unwrap();
    let options = HubOptions::from_env_with(|_| None)
        .with_endpoint(unreachable_endpoint())
        .with_cache_dir(cache.path());
    let err = hub::resolve(&repo_id("tiny-opt"), &options).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, HubError::NotCached { .. }), "{err:?}");
    for part in [
        "cannot be reached",
        "huggingface-cli download",
        "pass the model directory",
    ] {
        assert!(message.contains(part), "`{part}` not in: {message}");
    }

    // With the model cached, an unreachable hub is no problem, even with an optional file missing (which would
    // otherwise be fetched).
    let server = HubServer::start(vec![(&repo_id("tiny-opt"), HubRepo::tiny_opt())]);
    let dir = hub::resolve(&repo_id("tiny-opt"), &server.options(cache.path())).unwrap();
    std::fs::remove_file(dir.join("tokenizer_config.json")).unwrap();
    assert_eq!(hub::resolve(&repo_id("tiny-opt"), &options).unwrap(), dir);
}

#[test]
fn sharded_weights_download_every_shard() {
    let server = HubServer::start(vec![(&repo_id("sharded"), sharded_repo())]);
    let cache = tempfile::tempdir().unwrap();
    let dir = hub::resolve(&repo_id("sharded"), &server.options(cache.path())).unwrap();
    let repo = sharded_repo();
    for (file, bytes) in &repo.files {
        assert!(std::fs::read(dir.join(file)).unwrap() == *bytes, "{file}");
    }
    assert!(!dir.join("model.safetensors").exists());
    let checkpoint = blip2_nn::loader::Checkpoint::open(&dir).unwrap();
    assert_eq!(
        checkpoint.keys().collect::<Vec<_>>(),
        ["a.weight", "b.weight"]
    );
    // model.safetensors is tried first (404), then the index.
    let requests = server.requests();
    assert!(requests.iter().any(|r| r.file() == "model.safetensors"));
    // Cached: no requests.
    let seen = requests.len();
    assert_eq!(
        hub::resolve(&repo_id("sharded"), &server.options(cache.path())).unwrap(),
        dir
    );
    assert_eq!(server.requests().len(), seen);
    // Offline needs every shard.
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let offline = server.options(cache.path()).with_offline(true);
    assert!(matches!(
        hub::resolve(&repo_id("sharded"), &offline),
        Err(HubError::NotCached { .. })
    ));
}

#[test]
fn revisions_tags_and_commits() {
    let mut repo = HubRepo::tiny_opt();
    repo.revisions.push("v1.0".to_string());
    repo.revisions.push("refs/pr/1".to_string());
    let server = HubServer::start(vec![(&repo_id("tiny-opt"), repo)]);
    let cache = tempfile::tempdir().unwrap();
    let options = server.options(cache.path());
    let repo_dir = cache.path().join(format!("models--{OWNER}--tiny-opt"));
    let snapshot = snapshot_of(cache.path(), "tiny-opt", COMMIT);

    let tag = hub::resolve(&format!("{}@v1.0", repo_id("tiny-opt")), &options).unwrap();
    assert_eq!(tag, snapshot);
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/v1.0")).unwrap(),
        COMMIT
    );
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.path.contains("/resolve/v1.0/config.json"))
    );
    // A branch with `/` (URL-escaped as %2F), same commit: only config.json is fetched, the rest is there.
    let seen = server.requests().len();
    let pr = hub::resolve(&format!("{}@refs/pr/1", repo_id("tiny-opt")), &options).unwrap();
    assert_eq!(pr, snapshot);
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/refs/pr/1")).unwrap(),
        COMMIT
    );
    assert!(
        server.requests()[seen..]
            .iter()
            .all(|r| r.path.contains("/resolve/refs%2Fpr%2F1/config.json"))
    );

    // A commit: its snapshot is found directly, no request, and no refs/<commit> is written.
    let seen = server.requests().len();
    let offline = options.clone().with_offline(true);
    let commit = hub::resolve(&format!("{}@{COMMIT}", repo_id("tiny-opt")), &offline).unwrap();
    assert_eq!(commit, snapshot);
    assert_eq!(server.requests().len(), seen);
    assert!(!repo_dir.join("refs").join(COMMIT).exists());

    let err = hub::resolve(&format!("{}@nope", repo_id("tiny-opt")), &options).unwrap_err();
    assert!(matches!(err, HubError::NotOnHub { .. }), "{err:?}");
    assert!(err.to_string().contains("revision `nope`"), "{err}");
    let err = hub::resolve("tester/no-such-model", &options).unwrap_err();
    assert!(matches!(err, HubError::NotOnHub { .. }), "{err:?}");
}

#[test]
fn progress_is_reported_per_file() {
    let server = HubServer::start(vec![(&repo_id("tiny-opt"), HubRepo::tiny_opt())]);
    let cache = tempfile::tempdir().unwrap();
    let events: Arc<Mutex<Vec<(String, u64, u64)>>> = Arc::default();
    let sink = Arc::clone(&events);
    let options = server
        .options(cache.path())
        .with_progress(move |p: &DownloadProgress<'_>| {
            sink.lock()
                .unwrap()
                .push((p.file.to_string(), p.downloaded, p.total));
        });
    let dir = hub::resolve(&repo_id("tiny-opt"), &options).unwrap();
    let events = events.lock().unwrap();
    for file in TINY_OPT_FILES {
        let size = std::fs::metadata(dir.join(file)).unwrap().len();
        let mine: Vec<&(String, u64, u64)> = events.iter().filter(|e| e.0 == *file).collect();
        assert_eq!(mine.first().map(|e| (e.1, e.2)), Some((0, size)), "{file}");
        assert_eq!(
            mine.last().map(|e| (e.1, e.2)),
            Some((size, size)),
            "{file}"
        );
        assert!(mine.windows(2).all(|w| w[0].1 <= w[1].1), "{file}");
        assert_eq!(
            mine.iter().filter(|e| e.1 == 0).count(),
            1,
            "{file}: one start"
        );
    }
    assert!(events.iter().all(|e| e.0 != "special_tokens_map.json"));
}

// ------------------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------------------

#[test]
fn missing_required_files_name_the_file_and_the_repo() {
    let fixture = Fixture::open("tiny-opt");
    let no_config = HubRepo::from_dir(fixture.dir(), &["model.safetensors", "tokenizer.json"]);
    let no_weights = HubRepo::from_dir(fixture.dir(), &["config.json", "tokenizer.json"]);
    let mut missing_shard = sharded_repo();
    missing_shard
        .files
        .remove("model-00002-of-00002.safetensors");
    let mut bad_index = sharded_repo();
    bad_index.files.insert(
        "model.safetensors.index.json".to_string(),
        br#"{"weight_map": {"a.weight": "../../outside.safetensors"}}"#.to_vec(),
    );
    let server = HubServer::start(vec![
        ("tester/no-config", no_config),
        ("tester/no-weights", no_weights),
        ("tester/missing-shard", missing_shard),
        ("tester/bad-index", bad_index),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let options = server.options(cache.path());

    let err = hub::resolve("tester/no-config", &options).unwrap_err();
    match &err {
        HubError::MissingFile {
            file,
            repo,
            revision,
        } => {
            assert_eq!(
                (file.as_str(), repo.as_str(), revision.as_str()),
                ("config.json", "tester/no-config", "main")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("config.json is not in the hub repo `tester/no-config`"),
        "{err}"
    );

    let err = hub::resolve("tester/no-weights", &options).unwrap_err();
    assert!(
        matches!(&err, HubError::MissingFile { file, .. } if file.contains("model.safetensors")),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("model.safetensors.index.json"),
        "{err}"
    );

    let err = hub::resolve("tester/missing-shard", &options).unwrap_err();
    assert!(
        matches!(&err, HubError::MissingFile { file, repo, .. }
            if file == "model-00002-of-00002.safetensors" && repo == "tester/missing-shard"),
        "{err:?}"
    );

    let err = hub::resolve("tester/bad-index", &options).unwrap_err();
    assert!(matches!(&err, HubError::BadIndex { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("not a file name in the same directory"),
        "{err}"
    );
    assert!(!cache.path().join("outside.safetensors").exists());
}

#[test]
fn access_denied_mentions_hf_token_and_the_token_is_sent() {
    let server = HubServer::start_with_token(
        vec![(&repo_id("tiny-opt"), HubRepo::tiny_opt())],
        Some("hf_secret"),
    );
    let cache = tempfile::tempdir().unwrap();
    let err = hub::resolve(&repo_id("tiny-opt"), &server.options(cache.path())).unwrap_err();
    assert!(
        matches!(
            err,
            HubError::Unauthorized {
                status: 401,
                token_sent: false,
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    for part in [
        "refused access to `tester/tiny-opt`",
        "HTTP 401",
        "no token set",
        "HF_TOKEN",
        "local model directory",
    ] {
        assert!(message.contains(part), "`{part}` not in: {message}");
    }

    let wrong = server
        .options(cache.path())
        .with_token(Some("hf_wrong".to_string()));
    let err = hub::resolve(&repo_id("tiny-opt"), &wrong).unwrap_err();
    assert!(
        matches!(
            err,
            HubError::Unauthorized {
                token_sent: true,
                ..
            }
        ),
        "{err:?}"
    );

    let right = server
        .options(cache.path())
        .with_token(Some("hf_secret".to_string()));
    let dir = hub::resolve(&repo_id("tiny-opt"), &right).unwrap();
    assert!(dir.join("model.safetensors").is_file());
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.authorization.as_deref() == Some("Bearer hf_secret"))
    );
    // The token is not printed.
    assert!(!format!("{right:?}").contains("hf_secret"));
}

#[test]
fn other_http_errors_and_non_hub_servers_are_errors() {
    // A server that answers 500 to everything.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let _ = stream.write_all(&http(
                "500 Internal Server Error",
                &[("x-error-message", "overloaded".to_string())],
                b"",
            ));
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let options = HubOptions::from_env_with(|_| None)
        .with_endpoint(&endpoint)
        .with_cache_dir(cache.path());
    let err = hub::resolve(&repo_id("tiny-opt"), &options).unwrap_err();
    assert!(matches!(err, HubError::Http { status: 500, .. }), "{err:?}");
    assert!(err.to_string().contains("(overloaded)"), "{err}");

    // A plain file server without the hub's headers (etag, x-repo-commit).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let _ = stream.write_all(&http("200 OK", &[], b"{}"));
        }
    });
    let err = hub::resolve(&repo_id("tiny-opt"), &options.with_endpoint(&endpoint)).unwrap_err();
    assert!(matches!(err, HubError::Download { .. }), "{err:?}");
    assert!(err.to_string().contains("a HuggingFace hub?"), "{err}");
}

#[test]
fn an_unwritable_cache_is_an_io_error_with_the_path() {
    let server = HubServer::start(vec![(&repo_id("tiny-opt"), HubRepo::tiny_opt())]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let err = hub::resolve(&repo_id("tiny-opt"), &server.options(&file.join("hub"))).unwrap_err();
    match &err {
        HubError::Io { path, .. } => assert!(path.starts_with(&file), "{path:?}"),
        other => panic!("{other:?}"),
    }
}

// ------------------------------------------------------------------------------------------------------------
// Local directories and ids
// ------------------------------------------------------------------------------------------------------------

#[test]
fn local_directories_pass_through() {
    let fixture = Fixture::open("tiny-opt");
    let options = HubOptions::from_env_with(|_| None)
        .with_endpoint(unreachable_endpoint())
        .with_offline(true);
    let dir = fixture.dir().to_str().unwrap();
    assert_eq!(hub::resolve(dir, &options).unwrap(), fixture.dir());

    // A relative directory that looks like an id is a directory when it exists (tests run in the package dir).
    struct RemoveOnDrop(PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let owner = format!("hub-test-{}", std::process::id());
    let _guard = RemoveOnDrop(PathBuf::from(&owner));
    std::fs::create_dir_all(Path::new(&owner).join("model")).unwrap();
    let relative = format!("{owner}/model");
    assert_eq!(
        ModelSource::parse(&relative).unwrap(),
        ModelSource::Local(PathBuf::from(&relative))
    );
    assert_eq!(
        hub::resolve(&relative, &options).unwrap(),
        Path::new(&relative)
    );

    for missing in [
        "./no-such-dir",
        "/no/such/dir",
        "../no-such-dir",
        "~/no-such-blip2-dir",
    ] {
        match hub::resolve(missing, &options) {
            Err(HubError::DirectoryNotFound { path }) => {
                assert!(!path.starts_with("~"), "{path:?} (`~` is expanded)");
                assert!(
                    path.ends_with(missing.trim_start_matches(['.', '/', '~'])),
                    "{path:?}"
                );
            }
            other => panic!("{missing}: {other:?}"),
        }
    }
    let err = hub::resolve(
        fixture.dir().join("config.json").to_str().unwrap(),
        &options,
    )
    .unwrap_err();
    assert!(matches!(err, HubError::NotADirectory { .. }), "{err:?}");
    assert!(
        err.to_string().contains("pass the model directory"),
        "{err}"
    );
}

#[test]
fn hub_ids_are_validated() {
    let id = HubId::parse("Salesforce/blip2-opt-2.7b").unwrap();
    assert_eq!(
        (id.repo(), id.revision()),
        ("Salesforce/blip2-opt-2.7b", "main")
    );
    assert_eq!(id.cache_folder(), "models--Salesforce--blip2-opt-2.7b");
    assert_eq!(id.to_string(), "Salesforce/blip2-opt-2.7b");
    let id: HubId = "a_b/c.d@refs/pr/12".parse().unwrap();
    assert_eq!((id.repo(), id.revision()), ("a_b/c.d", "refs/pr/12"));
    assert_eq!(id.to_string(), "a_b/c.d@refs/pr/12");
    assert_eq!(
        ModelSource::parse("Salesforce/blip2-opt-2.7b@v1").unwrap(),
        ModelSource::Hub(HubId::parse("Salesforce/blip2-opt-2.7b@v1").unwrap())
    );

    let options = HubOptions::from_env_with(|_| None).with_endpoint(unreachable_endpoint());
    for bad in [
        "",
        "blip2",
        "a/b/c",
        "owner/",
        "/name",
        "@main",
        "owner/name@",
        "owner/na me",
        "owner/name?x=1",
        "owner/-name",
        "owner/name.",
        "own--er/name",
        "owner/na..me",
        "owner/name@../../x",
        "owner/name@a//b",
        "owner/name@refs/",
        "owner/name@a b",
        "ownér/name",
    ] {
        let err = hub::resolve(bad, &options).unwrap_err();
        if bad.starts_with('/') {
            assert!(
                matches!(err, HubError::DirectoryNotFound { .. }),
                "{bad}: {err:?}"
            );
            continue;
        }
        assert!(
            matches!(err, HubError::InvalidModel { .. }),
            "{bad}: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("neither a model directory nor a hub id"),
            "{message}"
        );
        assert!(message.contains("Salesforce/blip2-opt-2.7b"), "{message}");
    }
    let long = format!("owner/{}", "a".repeat(97));
    assert!(HubId::parse(&long).is_err());
    assert!(HubId::parse(&format!("owner/{}", "a".repeat(96))).is_ok());
}

// ------------------------------------------------------------------------------------------------------------
// Environment
// ------------------------------------------------------------------------------------------------------------

#[test]
fn options_read_the_environment_like_huggingface_hub() {
    let home = tempfile::tempdir().unwrap();
    let env = |pairs: &[(&str, &str)]| {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubOptions::from_env_with(move |key| map.get(key).cloned())
    };
    let home_str = home.path().to_str().unwrap();

    let defaults = env(&[("HOME", home_str)]);
    assert_eq!(defaults.endpoint, "https://huggingface.co");
    assert_eq!(
        defaults.cache_dir,
        home.path().join(".cache/huggingface/hub")
    );
    assert_eq!(defaults.token, None);
    assert!(!defaults.offline);

    let xdg = env(&[("HOME", home_str), ("XDG_CACHE_HOME", "/xdg")]);
    assert_eq!(xdg.cache_dir, Path::new("/xdg/huggingface/hub"));

    // HF_HOME: the cache under it, and the token file `huggingface-cli login` writes there.
    let hf_home = home.path().join("hf");
    std::fs::create_dir(&hf_home).unwrap();
    std::fs::write(hf_home.join("token"), "hf_from_file\n").unwrap();
    let hf_home_str = hf_home.to_str().unwrap();
    let options = env(&[("HOME", home_str), ("HF_HOME", hf_home_str)]);
    assert_eq!(options.cache_dir, hf_home.join("hub"));
    assert_eq!(options.token.as_deref(), Some("hf_from_file"));
    let options = env(&[("HOME", home_str), ("HF_HOME", "~/hf")]);
    assert_eq!(options.cache_dir, hf_home.join("hub"), "`~` is expanded");

    let options = env(&[
        ("HOME", home_str),
        ("HF_HOME", hf_home_str),
        ("HF_HUB_CACHE", "/elsewhere/hub"),
        ("HF_TOKEN", "hf_from_env"),
        ("HF_ENDPOINT", "https://hf-mirror.example/"),
        ("HF_HUB_OFFLINE", "1"),
    ]);
    assert_eq!(options.cache_dir, Path::new("/elsewhere/hub"));
    assert_eq!(options.token.as_deref(), Some("hf_from_env"));
    assert_eq!(options.endpoint, "https://hf-mirror.example");
    assert!(options.offline);

    let token_path = home.path().join("my-token");
    std::fs::write(&token_path, "hf_custom").unwrap();
    let options = env(&[
        ("HOME", home_str),
        ("HF_HOME", hf_home_str),
        ("HF_TOKEN_PATH", token_path.to_str().unwrap()),
        ("HF_TOKEN", ""),
    ]);
    assert_eq!(
        options.token.as_deref(),
        Some("hf_custom"),
        "an empty HF_TOKEN is unset"
    );

    for (value, offline) in [
        ("true", true),
        ("YES", true),
        ("on", true),
        ("0", false),
        ("false", false),
        ("", false),
    ] {
        let options = env(&[("HOME", home_str), ("HF_HUB_OFFLINE", value)]);
        assert_eq!(options.offline, offline, "HF_HUB_OFFLINE={value}");
    }
    assert!(env(&[("HOME", home_str), ("TRANSFORMERS_OFFLINE", "1")]).offline);

    // The builders.
    let options = defaults
        .with_endpoint("http://127.0.0.1:9/")
        .with_cache_dir("/c")
        .with_token(Some("t".to_string()))
        .with_offline(true);
    assert_eq!(options.endpoint, "http://127.0.0.1:9");
    assert_eq!(options.cache_dir, Path::new("/c"));
    assert!(options.offline);
    let debug = format!("{options:?}");
    assert!(
        debug.contains("<redacted>") && !debug.contains("\"t\""),
        "{debug}"
    );
}
