//! `cargo xtask dist`'s container image, built offline: no base image is pulled (none can be,
//! here), so the one layer holds the stripped release `tcpq`, exactly the shared libraries `ldd`
//! names for it and its dynamic loader, copied from this machine. Written as an OCI image layout
//! in one tar (`oci-layout`, `index.json`, `blobs/sha256/…`: the manifest, the config and the
//! gzip'd layer, each named by its sha256) plus Docker's `manifest.json` over the same blobs, so
//! that `podman load`, `docker load` (also before Docker 25, which reads only manifest.json) and
//! `ctr -n k8s.io images import` all take it.
//!
//! The JSON documents are built with oci-spec's types (the spec's field names and media types,
//! digests validated), then serialized through serde_json's sorted maps: oci-spec keeps labels
//! and annotations in HashMaps, whose order would otherwise change the config's and the index's
//! digests from one build to the next. Every timestamp is SOURCE_DATE_EPOCH or HEAD's commit time
//! and every file is root-owned: the same commit gives the same image id.
use std::{
    collections::{BTreeSet, HashMap},
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use oci_spec::image::{
    ANNOTATION_CREATED, ANNOTATION_DESCRIPTION, ANNOTATION_LICENSES, ANNOTATION_REF_NAME,
    ANNOTATION_REVISION, ANNOTATION_TITLE, ANNOTATION_VERSION, Arch, ConfigBuilder, Descriptor,
    DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder, Sha256Digest,
};
use sha2::{Digest as _, Sha256};

use crate::output_of;

/// The image's name. Fully qualified, so that podman, Docker, containerd and CRI-O all store
/// and look it up under the same name (a bare `tcpq:V` becomes `localhost/tcpq:V` in podman and
/// `docker.io/library/tcpq:V` in containerd); deploy/kubernetes/tcpq.yaml names it.
pub const IMAGE: &str = "localhost/tcpq";

/// containerd's own name annotation (`ctr images import` prefers it to ref.name).
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Builds `out/tcpq-VERSION-oci.tar` from the (stripped) `binary`; returns its path.
pub fn oci_archive(out: &Path, version: &str, binary: &Path) -> Result<PathBuf> {
    let reference = format!("{IMAGE}:{version}");
    let epoch = source_date_epoch();
    let created = rfc3339(epoch);
    let revision = revision();

    // The layer: the binary, its libraries and their directories.
    let mut files: Vec<(String, PathBuf, u32)> =
        vec![("usr/bin/tcpq".into(), binary.into(), 0o755)];
    for lib in shared_libraries(binary)? {
        let inside = lib
            .to_str()
            .and_then(|p| p.strip_prefix('/'))
            .with_context(|| format!("ldd named a library outside /: {}", lib.display()))?
            .to_string();
        files.push((inside, lib, 0o755));
    }
    files.sort();
    let mut layer = tar::Builder::new(Vec::new());
    // Every parent directory, parents first (a parent's path sorts before its children's).
    let dirs: BTreeSet<&str> = files
        .iter()
        .flat_map(|(inside, _, _)| Path::new(inside).ancestors().skip(1))
        .filter_map(|d| d.to_str().filter(|d| !d.is_empty()))
        .collect();
    for dir in &dirs {
        append(
            &mut layer,
            &format!("{dir}/"),
            &[],
            0o755,
            tar::EntryType::Directory,
            epoch,
        )?;
    }
    for (inside, from, mode) in &files {
        // Read through symlinks: /lib64/ld-linux-x86-64.so.2 is one on Debian.
        let data = std::fs::read(from).with_context(|| format!("read {}", from.display()))?;
        append(
            &mut layer,
            inside,
            &data,
            *mode,
            tar::EntryType::Regular,
            epoch,
        )?;
    }
    let layer_tar = layer.into_inner().context("finish the image layer's tar")?;
    let diff_id = sha256(&layer_tar);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&layer_tar).context("gzip the image layer")?;
    let layer_gz = gz.finish().context("gzip the image layer")?;

    let labels: HashMap<String, String> = [
        (ANNOTATION_TITLE, "tcpq"),
        (
            ANNOTATION_DESCRIPTION,
            "why do TCP connections fail on this node? tcpq export: a Prometheus exporter (eBPF, counters first)",
        ),
        (ANNOTATION_VERSION, version),
        (ANNOTATION_REVISION, &revision),
        (ANNOTATION_CREATED, &created),
        (ANNOTATION_LICENSES, "MIT OR Apache-2.0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(Arch::default())
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .entrypoint(vec!["/usr/bin/tcpq".to_string(), "export".to_string()])
                .exposed_ports(vec!["9464/tcp".to_string()])
                .working_dir("/")
                .stop_signal("SIGTERM")
                .labels(labels.clone())
                .build()?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![format!("sha256:{diff_id}")])
                .build()?,
        )
        .history(vec![
            HistoryBuilder::default()
                .created(created.clone())
                .created_by(format!(
                    "cargo xtask dist: /usr/bin/tcpq {version} and the libraries ldd names"
                ))
                .build()?,
        ])
        .build()?;
    let config_json = canonical(&config)?;

    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, &config_json)?)
        .layers(vec![descriptor(MediaType::ImageLayerGzip, &layer_gz)?])
        .annotations(labels)
        .build()?;
    let manifest_json = canonical(&manifest)?;

    let mut manifest_desc = descriptor(MediaType::ImageManifest, &manifest_json)?;
    manifest_desc.set_platform(Some(
        PlatformBuilder::default()
            .architecture(Arch::default())
            .os(Os::Linux)
            .build()?,
    ));
    manifest_desc.set_annotations(Some(HashMap::from([
        (ANNOTATION_REF_NAME.to_string(), reference.clone()),
        (CONTAINERD_NAME.to_string(), reference.clone()),
    ])));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_desc])
        .build()?;
    let index_json = canonical(&index)?;

    let blob = |data: &[u8]| format!("blobs/sha256/{}", sha256(data));
    // Docker's own archive format over the same blobs (what `docker save` writes next to the OCI
    // layout since Docker 25; older Dockers load only this).
    let docker_manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": blob(&config_json),
        "RepoTags": [reference],
        "Layers": [blob(&layer_gz)],
    }]))?;

    let mut archive = tar::Builder::new(Vec::new());
    let dir = tar::EntryType::Directory;
    let file = tar::EntryType::Regular;
    append(&mut archive, "blobs/", &[], 0o755, dir, epoch)?;
    append(&mut archive, "blobs/sha256/", &[], 0o755, dir, epoch)?;
    for data in [&config_json, &layer_gz, &manifest_json] {
        append(&mut archive, &blob(data), data, 0o644, file, epoch)?;
    }
    append(
        &mut archive,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
        file,
        epoch,
    )?;
    append(&mut archive, "index.json", &index_json, 0o644, file, epoch)?;
    append(
        &mut archive,
        "manifest.json",
        &docker_manifest,
        0o644,
        file,
        epoch,
    )?;
    let bytes = archive.into_inner().context("finish the image archive")?;
    let path = out.join(format!("tcpq-{version}-oci.tar"));
    std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
    eprintln!(
        "xtask: built {} ({reference}, layer {} KiB gzip'd / {} KiB, image {})",
        path.display(),
        layer_gz.len().div_ceil(1024),
        layer_tar.len().div_ceil(1024),
        blob(&config_json)
            .trim_start_matches("blobs/sha256/")
            .get(..12)
            .unwrap_or_default(),
    );
    Ok(path)
}

/// The libraries `ldd` names for `binary`, the dynamic loader included (the vDSO is the
/// kernel's); none for a static binary. Err when one is not found.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("run ldd (libc-bin) to list the image's libraries")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
            || text.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "list the image's libraries: ldd {} failed: {} (dist builds the image of a binary for this machine)",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_ldd(&text)
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!(
                "list the image's libraries: ldd finds no {} on this machine (install the package that ships it)",
                line.split(" =>").next().unwrap_or(line)
            );
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`;
        // `linux-vdso.so.1 (0x…)` has no path.
        let path = line.split_once(" => ").map_or(line, |(_, p)| p);
        let path = path.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

fn append(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    mode: u32,
    kind: tar::EntryType,
    mtime: u64,
) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_username("root").context("tar header")?;
    h.set_groupname("root").context("tar header")?;
    b.append_data(&mut h, path, data)
        .with_context(|| format!("add {path} to the image's tar"))
}

fn descriptor(media_type: MediaType, data: &[u8]) -> Result<Descriptor> {
    let digest: Sha256Digest = sha256(data).parse()?;
    Ok(DescriptorBuilder::default()
        .media_type(media_type)
        .digest(digest)
        .size(data.len() as u64)
        .build()?)
}

/// JSON with every object's keys sorted (serde_json's Map is a BTreeMap): a stable digest.
fn canonical<T: serde::Serialize>(doc: &T) -> Result<Vec<u8>> {
    let value = serde_json::to_value(doc)?;
    Ok(serde_json::to_vec(&value)?)
}

pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SOURCE_DATE_EPOCH, else HEAD's commit time, else 0.
fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| output_of(Command::new("git").args(["log", "-1", "--format=%ct"])))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// HEAD's commit, `-dirty` when tracked files differ from it; `unknown` outside git.
fn revision() -> String {
    let Some(head) = output_of(Command::new("git").args(["rev-parse", "HEAD"])) else {
        return "unknown".into();
    };
    let dirty =
        output_of(Command::new("git").args(["status", "--porcelain", "--untracked-files=no"]))
            .is_some_and(|s| !s.trim().is_empty());
    format!("{}{}", head.trim(), if dirty { "-dirty" } else { "" })
}

/// Seconds since the epoch as RFC 3339 UTC (civil-from-days, proleptic Gregorian).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn ldd_lines_give_paths_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn canonical_json_sorts_hash_map_keys() {
        let m: HashMap<String, u32> = (0..26).map(|i| (format!("k{i:02}"), i)).collect();
        let text = String::from_utf8(canonical(&m).unwrap()).unwrap();
        let keys: Vec<&str> = text.split('"').skip(1).step_by(2).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!((keys.len(), &keys), (26, &sorted), "{text}");
    }
}
