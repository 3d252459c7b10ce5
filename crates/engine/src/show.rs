//! `stasis show`: every record of an image directory decoded into JSON (like CRIU's crit).
//! Page and blob contents are not printed, only where they are and their checksums; they are
//! read and checked, so `show` also verifies a whole image directory. With the image key, it
//! verifies the authentication of every file too (and fails when one does not verify). An
//! incremental dump's chain is listed under `"chain"`, each ancestor checked against its
//! child's link (and authenticated, with the key), and the runs held by ancestors are read
//! and checked there too.

use crate::chain::ChainPages;
use crate::pages::compress::RunDecoder;
use crate::{files, Error};
use stasis_image::{
    names, read_record, ImageDir, ImageKey, Inventory, ProcessImage, RecordKind, RunCodec,
};

/// Decodes the inventory and every process record; checks the raw files' headers. With `key`,
/// images that carry `auth.img` are authenticated first (every file, whole); the result says
/// under `"authentication"` whether they were (`"status"`: `"verified"`, `"not verified"`
/// without the key, `"none"` without `auth.img`).
pub fn show(dir: &ImageDir, key: Option<&ImageKey>) -> Result<serde_json::Value, Error> {
    let authentication = if !dir.exists(names::AUTH) {
        serde_json::json!({ "status": "none" })
    } else if let Some(key) = key {
        crate::restore::authenticate(dir, Some(key), true)?;
        stasis_image::auth::verify_all(dir)?;
        let id: String = dir
            .dump_id()
            .unwrap_or_default()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        serde_json::json!({ "status": "verified", "dump_id": id })
    } else {
        serde_json::json!({
            "status": "not verified",
            "reason": "the image key is not readable here (root only)",
        })
    };
    let inventory: Inventory = read_record(dir, names::INVENTORY, RecordKind::Inventory)?;
    // An incremental dump: its ancestors, each checked against its child's link and
    // authenticated as this one was.
    let ancestors = crate::chain::open_ancestors(
        dir,
        &inventory,
        crate::chain::ChainAuth {
            key: key.filter(|_| dir.is_authenticated()),
            required: dir.is_authenticated(),
            root_only_unless_authenticated: false,
        },
    )?;
    let chain: Vec<serde_json::Value> = ancestors
        .iter()
        .enumerate()
        .map(|(k, a)| serde_json::json!({ "image": k + 1, "path": a.label() }))
        .collect();
    let mut processes = Vec::new();
    for &pid in &inventory.processes {
        let image: ProcessImage = read_record(dir, &names::process(pid), RecordKind::Process)?;
        let pages = ChainPages::open(dir, &ancestors, pid, &image.page_runs)?;
        stasis_image::validate_process_in_chain(
            &image,
            &pages.lens(),
            &dir.path_of(&names::process(pid)),
            &files::KindChecks,
        )?;
        verify_data(dir, &image, &pages)?;
        let mut v = serde_json::to_value(&image)
            .map_err(|e| Error::Invalid(format!("encoding JSON: {e}")))?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "pages_file".into(),
                serde_json::json!({ "name": names::pages(pid), "payload_bytes": pages.own().len() }),
            );
        }
        processes.push(v);
    }
    Ok(serde_json::json!({
        "format_version": stasis_image::FORMAT_VERSION,
        "authentication": authentication,
        "inventory": inventory,
        "chain": chain,
        "processes": processes,
    }))
}

/// Reads every page run (from the pages file of its image of the chain) and blob and checks
/// its CRC (blobs through their kind's module); compressed runs are decoded too (each must
/// give exactly its pages).
fn verify_data(dir: &ImageDir, image: &ProcessImage, pages: &ChainPages) -> Result<(), Error> {
    let mut buf = vec![0u8; 1 << 20];
    let mut decoder = None;
    for r in &image.page_runs {
        if r.codec == RunCodec::Inherited {
            // Nothing stored: the parent's pages (the plan of a restore checks that the
            // parent has memory there).
            continue;
        }
        if r.codec == RunCodec::Zstd {
            let d = match &mut decoder {
                Some(d) => d,
                None => decoder.insert(RunDecoder::new()?),
            };
            d.read_zstd(pages, r)?;
            continue;
        }
        let Some(file) = pages.file(r.image) else {
            return Err(Error::Invalid(format!(
                "page run at {:#x} is in image {} of the chain, which is not open",
                r.addr, r.image
            )));
        };
        // Checked a piece at a time: a run's length is image data.
        let len = r.stored_len;
        let (mut done, mut crc) = (0u64, 0u32);
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            file.read_unchecked(r.offset.saturating_add(done), &mut buf[..n])?;
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            done += n as u64;
        }
        if crc != r.crc {
            return Err(Error::Image(stasis_image::ImageError::BadPayloadCrc {
                path: file.path().to_path_buf(),
            }));
        }
    }
    files::verify(dir, image)
}
