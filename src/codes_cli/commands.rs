//! The `codes` commands: read the current version, change it, publish.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::progress::Phase;
use super::report;
use super::{CodesCommand, CodesError, ImportArgs, MatchMode, ProgramSettingsCommand};
use crate::codes::csv_safety;
use crate::codes::edit::{self, Edit, ImportMode};
use crate::codes::export::{code_record, write_codes, write_partners};
use crate::codes::load::{LoadProblem, long_pattern_problems, read_codes_lenient, read_partners};
use crate::codes::table::BuildOptions;
use crate::codes::{CodeEntry, CodeTable, LoadProblems, Partner};
use crate::redis::store::snapshot::{ChunksReader, decode_delta};
use crate::redis::store::{Snapshot, Store, StoreError, VersionMeta};
use crate::settings::Settings;
use crate::settings::detectors::ProgramSettings;

/// A publish that loses a race with another admin is redone from the new version this often.
const PUBLISH_ATTEMPTS: usize = 3;
/// Files above this size get a progress bar (on a terminal).
const PROGRESS_MIN_BYTES: u64 = 4 * 1024 * 1024;

pub fn run(settings: &Settings, command: CodesCommand) -> Result<(), CodesError> {
    let mut store = Store::connect(&settings.store)?;
    match command {
        CodesCommand::Import(args) => import(&mut store, settings, &args),
        CodesCommand::Expire(code) => edit_code(&mut store, settings, code, Edit::Expire),
        CodesCommand::Reactivate(code) => edit_code(&mut store, settings, code, Edit::Reactivate),
        CodesCommand::SetDates { code, start, end } => {
            edit_code(&mut store, settings, code, Edit::SetDates { start, end })
        }
        CodesCommand::Assign { code, partner } => {
            edit_code(&mut store, settings, code, Edit::Assign { partner })
        }
        CodesCommand::List(args) => {
            let (_, snapshot) = current(&mut store)?;
            report::list(&snapshot, &args)
        }
        CodesCommand::Export {
            program,
            output,
            partners_output,
        } => {
            let (_, mut snapshot) = current(&mut store)?;
            if let Some(program) = &program {
                snapshot.entries.retain(|e| &*e.program_id == program);
            }
            export(&snapshot, output.as_deref(), partners_output.as_deref())
        }
        CodesCommand::Show {
            raw,
            program,
            at,
            format,
        } => {
            let (version, snapshot) = current(&mut store)?;
            let table = build(snapshot, version, settings.codes.build_options())?;
            report::show(&table, &raw, program.as_deref(), at.as_deref(), format)
        }
        CodesCommand::History { limit, format } => {
            let current = store.current_version()?;
            let history = store.history(limit)?;
            let mut retained = Vec::with_capacity(history.len());
            for meta in &history {
                retained.push(store.version_exists(meta.version)?);
            }
            report::history(&history, &retained, current, format);
            Ok(())
        }
        CodesCommand::Rollback { version } => rollback(&mut store, settings, version),
        CodesCommand::ProgramSettings(command) => program_settings(&mut store, settings, command),
    }
}

/// The version in force and its content; an empty table before the first publish.
fn current_or_empty(store: &mut Store) -> Result<(Option<u64>, Snapshot), CodesError> {
    match store.load_current()? {
        None => Ok((None, Snapshot::default())),
        Some(stored) => Ok((Some(stored.meta.version), stored.snapshot()?)),
    }
}

fn current(store: &mut Store) -> Result<(u64, Snapshot), CodesError> {
    match current_or_empty(store)? {
        (Some(version), snapshot) => Ok((version, snapshot)),
        (None, _) => Err(CodesError::Request(
            "the store holds no code table yet; publish one with `codes import`".into(),
        )),
    }
}

fn build(snapshot: Snapshot, version: u64, options: BuildOptions) -> Result<CodeTable, CodesError> {
    snapshot
        .build_with(
            &version.to_string(),
            &format!("store version {version}"),
            options,
        )
        .map_err(CodesError::Invalid)
}

fn read_file(path: &Path) -> Result<Vec<u8>, CodesError> {
    let cannot = |e: std::io::Error| CodesError::Io(format!("cannot read {}: {e}", path.display()));
    let file = File::open(path).map_err(cannot)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let progress = if size >= PROGRESS_MIN_BYTES {
        let bar = ProgressBar::new(size);
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {eta}")
        {
            bar.set_style(style);
        }
        bar.set_message(format!("reading {}", path.display()));
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut bytes = Vec::with_capacity(size as usize);
    progress
        .wrap_read(BufReader::new(file))
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    progress.finish_and_clear();
    Ok(bytes)
}

/// An uploaded file, checked on its own.
struct Upload {
    entries: Vec<CodeEntry>,
    columns: Vec<String>,
    partners: Option<(Vec<Partner>, Vec<String>)>,
}

/// The header names of a CSV file (empty when it has none; the loader reports that).
fn header(bytes: impl Read) -> Vec<String> {
    csv::Reader::from_reader(bytes)
        .headers()
        .map(|h| h.iter().map(str::to_string).collect())
        .unwrap_or_default()
}

fn open(path: &Path) -> Result<File, CodesError> {
    File::open(path).map_err(|e| CodesError::Io(format!("cannot read {}: {e}", path.display())))
}

/// Reads and checks the uploaded files on their own, so problems point at their lines. The
/// codes are parsed as they stream from the file (no copy of its bytes is held).
fn read_upload(args: &ImportArgs, options: BuildOptions) -> Result<Upload, CodesError> {
    let origin = args.file.display().to_string();
    let columns = header(BufReader::new(open(&args.file)?));
    let file = open(&args.file)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let reading = Phase::bytes("read", size);
    let (entries, mut problems) = read_codes_lenient(reading.wrap(BufReader::new(file)), &origin);
    reading.done(entries.len() + problems.len(), "rows");
    if let Some(program) = &args.program {
        for entry in edit::outside_program(&entries, program) {
            problems.push(LoadProblem {
                origin: origin.clone(),
                line: u64::from(entry.source_line),
                column: Some("Program Id".into()),
                reason: format!(
                    "program {} is not {program} (--program); the row would change another program",
                    entry.program_id
                ),
            });
        }
    }
    problems.extend(csv_safety::code_problems(&entries, &origin));
    problems.extend(long_pattern_problems(&entries, &origin));
    let partners = match &args.partners {
        None => None,
        Some(path) => {
            let bytes = read_file(path)?;
            let origin = path.display().to_string();
            match read_partners(bytes.as_slice(), &origin) {
                Ok(partners) => {
                    problems.extend(csv_safety::partner_problems(&partners, &origin));
                    Some((partners, header(bytes.as_slice())))
                }
                Err(invalid) => {
                    problems.extend(invalid.0);
                    None
                }
            }
        }
    };
    // Duplicates and patterns within the file, reported against the file's own lines. The
    // rows go into the index and come back out, rather than being copied for it.
    let rows = entries.len();
    let validating = Phase::spinner("validated", format!("{rows} rows"));
    let entries = match CodeTable::build(entries, Vec::new(), "upload", &origin, options) {
        Ok(table) => table.into_entries(),
        Err(more) => {
            problems.extend(more.0);
            Vec::new()
        }
    };
    validating.done(rows, "rows");
    if !problems.is_empty() {
        problems.sort_by(|a, b| (&a.origin, a.line).cmp(&(&b.origin, b.line)));
        return Err(CodesError::Invalid(LoadProblems(problems)));
    }
    Ok(Upload {
        entries,
        columns,
        partners,
    })
}

fn import(store: &mut Store, settings: &Settings, args: &ImportArgs) -> Result<(), CodesError> {
    let upload = read_upload(args, settings.codes.build_options())?;
    let mode = if args.replace {
        ImportMode::Replace
    } else {
        ImportMode::Merge
    };
    let command = format!(
        "import {}{}{}",
        args.file.display(),
        if args.replace { " --replace" } else { "" },
        args.program
            .as_ref()
            .map(|p| format!(" --program {p}"))
            .unwrap_or_default()
    );
    let how = Publish {
        dry_run: args.dry_run,
        ..Publish::new(&command)
    };
    // The rows move into the new table rather than being copied, so a million of them are not
    // held twice; a publish redone after losing a race reads the file again.
    let first = std::cell::RefCell::new(Some(upload));
    publish_change(store, settings, how, |base| {
        let taken = first.borrow_mut().take();
        let upload = match taken {
            Some(upload) => upload,
            None => read_upload(args, settings.codes.build_options())?,
        };
        let entries = edit::combine(
            &base.entries,
            upload.entries,
            mode,
            args.program.as_deref(),
            &upload.columns,
        );
        let partners = match &upload.partners {
            None => base.partners.clone(),
            Some((new, columns)) => edit::merge_partners(&base.partners, new, columns),
        };
        Ok(Changed::new(Snapshot {
            entries,
            partners,
            programs: base.programs.clone(),
        }))
    })
}

fn edit_code(
    store: &mut Store,
    settings: &Settings,
    code: super::CodeArgs,
    change: Edit,
) -> Result<(), CodesError> {
    let mode = code.match_mode.map(MatchMode::match_type);
    let placeholder = format!("{} {}", change.describe(), code.code);
    publish_change(store, settings, Publish::new(&placeholder), |base| {
        let index = edit::find(&base.entries, &code.code, code.program.as_deref(), mode)?;
        if let Edit::Assign { partner } = &change
            && !base.partners.iter().any(|p| p.partner_id == partner.trim())
        {
            eprintln!(
                "warning: partner {partner} is not in the partners table; it is credited on the defaults for unlisted partners (active, 30-day window, PREFERRED)"
            );
        }
        let mut changed = base.clone();
        edit::apply(&mut changed.entries[index], &change)?;
        let entry = &changed.entries[index];
        let unsafe_cells = csv_safety::code_problems(std::slice::from_ref(entry), "the edited row");
        if !unsafe_cells.is_empty() {
            return Err(CodesError::Invalid(LoadProblems(unsafe_cells)));
        }
        // Named as stored, so the history reads the same whichever spelling was typed.
        let command = format!(
            "{} {} (program {})",
            change.describe(),
            entry.code,
            entry.program_id
        );
        let delta = vec![code_record(entry).to_vec()];
        Ok(Changed {
            command: Some(command),
            delta,
            ..Changed::new(changed)
        })
    })
}

fn rollback(store: &mut Store, settings: &Settings, version: u64) -> Result<(), CodesError> {
    let target = match store.load_version(version) {
        Err(StoreError::MissingVersion(v)) => {
            return Err(CodesError::Request(format!(
                "version {v} is not in the store (never published, or its content was removed; see `codes history`)"
            )));
        }
        other => other?.snapshot()?,
    };
    let command = format!("rollback to {version}");
    let how = Publish {
        always: true,
        over_broken: true,
        ..Publish::new(&command)
    };
    publish_change(store, settings, how, |_| Ok(Changed::new(target.clone())))
}

fn program_settings(
    store: &mut Store,
    settings: &Settings,
    command: ProgramSettingsCommand,
) -> Result<(), CodesError> {
    match command {
        ProgramSettingsCommand::Show => {
            let (_, snapshot) = current_or_empty(store)?;
            let json = serde_json::to_string_pretty(&snapshot.programs)
                .map_err(|e| CodesError::Io(e.to_string()))?;
            println!("{json}");
            Ok(())
        }
        ProgramSettingsCommand::Set { program, file } => {
            let bytes = read_file(&file)?;
            let parsed: ProgramSettings = serde_json::from_slice(&bytes).map_err(|e| {
                CodesError::Invalid(LoadProblems(vec![LoadProblem {
                    origin: file.display().to_string(),
                    line: e.line() as u64,
                    column: None,
                    reason: e.to_string(),
                }]))
            })?;
            let mut problems = Vec::new();
            parsed.check(&mut problems);
            if !problems.is_empty() {
                return Err(CodesError::Invalid(LoadProblems(
                    problems
                        .into_iter()
                        .map(|reason| LoadProblem {
                            origin: file.display().to_string(),
                            line: 0,
                            column: None,
                            reason,
                        })
                        .collect(),
                )));
            }
            let command = format!("program-settings set {program}");
            publish_change(store, settings, Publish::new(&command), |base| {
                if !base.entries.iter().any(|e| *e.program_id == *program) {
                    eprintln!(
                        "warning: program {program} has no codes in the table; its settings are \
                         published but change nothing until codes of program {program} are \
                         imported (a typo in the program id?)"
                    );
                }
                let mut changed = base.clone();
                changed.programs.insert(program.clone(), parsed.clone());
                Ok(Changed::new(changed))
            })
        }
        ProgramSettingsCommand::Clear { program } => {
            let command = format!("program-settings clear {program}");
            publish_change(store, settings, Publish::new(&command), |base| {
                let mut changed = base.clone();
                if changed.programs.remove(&program).is_none() {
                    return Err(CodesError::Request(format!(
                        "program {program} has no settings"
                    )));
                }
                Ok(Changed::new(changed))
            })
        }
    }
}

/// What a change makes of the version in force.
struct Changed {
    next: Snapshot,
    /// The rows a single-row edit changed (see [`VersionMeta::delta`]); empty for bulk changes.
    delta: Vec<Vec<String>>,
    /// A history entry better than [`Publish::command`], known only once the change is made.
    command: Option<String>,
}

impl Changed {
    fn new(next: Snapshot) -> Changed {
        Changed {
            next,
            delta: Vec::new(),
            command: None,
        }
    }
}

/// How a change is published.
struct Publish<'c> {
    command: &'c str,
    /// Validate and report only.
    dry_run: bool,
    /// Publish even when the summary shows no difference (a rollback restores row order too,
    /// which decides ties between regexes, and which the summary does not compare).
    always: bool,
    /// Go ahead when the version in force cannot be read (a rollback must be able to replace a
    /// broken version).
    over_broken: bool,
}

impl<'c> Publish<'c> {
    fn new(command: &'c str) -> Publish<'c> {
        Publish {
            command,
            dry_run: false,
            always: false,
            over_broken: false,
        }
    }
}

/// Reads the current version, applies `change`, validates the result exactly as the workers
/// will read it, and publishes it; redone on the newer version if another admin published in
/// between.
fn publish_change(
    store: &mut Store,
    settings: &Settings,
    how: Publish<'_>,
    change: impl Fn(&Snapshot) -> Result<Changed, CodesError>,
) -> Result<(), CodesError> {
    let mut attempt = 1;
    loop {
        let (base_version, base) = match current_or_empty(store) {
            Err(CodesError::Store(StoreError::Corrupt { version, reason })) if how.over_broken => {
                eprintln!(
                    "warning: version {version} in force is unreadable ({reason}); replacing it"
                );
                (store.current_version()?, Snapshot::default())
            }
            other => other?,
        };
        let Changed {
            next,
            delta,
            command,
        } = change(&base)?;
        // A bulk change can be a million rows: say what is going on while it is checked.
        let checking_bulk = delta.is_empty();
        let checking = checking_bulk.then(|| {
            Phase::spinner(
                "checked",
                format!("the resulting table of {} rows", next.entries.len()),
            )
        });
        let next = verify_readable(next, &delta, settings.codes.build_options())?;
        let programs_changed = next
            .programs
            .iter()
            .filter(|(id, s)| base.programs.get(*id) != Some(s))
            .count()
            + base
                .programs
                .keys()
                .filter(|id| !next.programs.contains_key(*id))
                .count();
        let summary = edit::summarize(
            &base.entries,
            &next.entries,
            &base.partners,
            &next.partners,
            programs_changed,
        );
        if let Some(checking) = checking {
            checking.done(next.entries.len(), "rows");
        }
        if how.dry_run {
            println!("dry run, nothing written: would publish {summary}");
            return Ok(());
        }
        if summary.is_empty() && base_version.is_some() && !how.always {
            println!("no changes ({summary}); nothing published");
            return Ok(());
        }
        let meta = VersionMeta {
            published_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            author: author(),
            reason: reason(),
            command: command.unwrap_or_else(|| how.command.to_string()),
            summary: summary.to_string(),
            delta,
            ..VersionMeta::default()
        };
        let uploading = checking_bulk
            .then(|| Phase::spinner("uploaded", format!("{} rows", next.entries.len())));
        let published = store.publish(&next, base_version, meta);
        if let Some(uploading) = uploading {
            uploading.done(next.entries.len(), "rows");
        }
        match published {
            Ok(published) => {
                println!("published version {}: {summary}", published.version);
                prune(store, settings);
                return Ok(());
            }
            Err(StoreError::Conflict { current, .. }) if attempt < PUBLISH_ATTEMPTS => {
                eprintln!("version {current} was published meanwhile; redoing the change on it");
                attempt += 1;
            }
            Err(other) => return Err(other.into()),
        }
    }
}

/// Checks the new table the way a worker will read it, so that no version a worker would refuse
/// is ever published: the changed rows of a single-row edit through the loader; a bulk change
/// encoded, read back and indexed whole. The table read back is what is returned (and
/// published): holding it instead of a copy keeps one copy of a million rows fewer in memory.
fn verify_readable(
    next: Snapshot,
    delta: &[Vec<String>],
    options: BuildOptions,
) -> Result<Snapshot, CodesError> {
    let origin = "the resulting table";
    if !delta.is_empty() {
        // The other rows were read from the store and are unchanged; an edit cannot add a
        // duplicate or a pattern.
        decode_delta(delta, origin).map_err(CodesError::Invalid)?;
        return Ok(next);
    }
    let encoded = next
        .encode()
        .map_err(|e| CodesError::Io(format!("cannot encode the table: {e}")))?;
    let Snapshot {
        partners, programs, ..
    } = next;
    let decoded = Snapshot::decode(
        ChunksReader::new(&encoded.code_chunks),
        encoded.partners.as_slice(),
        &encoded.programs,
        origin,
    )
    .map_err(CodesError::Invalid)?;
    drop(encoded);
    let table = CodeTable::build(decoded.entries, Vec::new(), "validation", origin, options)
        .map_err(CodesError::Invalid)?;
    Ok(Snapshot {
        entries: table.into_entries(),
        partners,
        programs,
    })
}

fn prune(store: &mut Store, settings: &Settings) {
    let removed = store.prune(
        settings.store.keep_versions as usize,
        Duration::from_secs(settings.store.grace_secs),
        chrono::Utc::now(),
    );
    match removed {
        Ok(removed) if !removed.is_empty() => {
            eprintln!("removed the content of old versions {removed:?}");
        }
        Ok(_) => {}
        // The publish has happened; old content only costs memory until the next one.
        Err(e) => eprintln!("warning: could not remove old versions: {e}"),
    }
}

/// Who publishes and why, from the command line; set once per process before any publish.
static SIGNATURE: std::sync::OnceLock<(Option<String>, String)> = std::sync::OnceLock::new();

pub fn sign(author: Option<String>, reason: String) {
    let _ = SIGNATURE.set((author.filter(|a| !a.trim().is_empty()), reason));
}

fn reason() -> String {
    SIGNATURE.get().map(|(_, r)| r.clone()).unwrap_or_default()
}

fn author() -> String {
    if let Some((Some(author), _)) = SIGNATURE.get() {
        return author.clone();
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

fn export(
    snapshot: &Snapshot,
    output: Option<&Path>,
    partners_output: Option<&Path>,
) -> Result<(), CodesError> {
    let create = |path: &Path| {
        File::create(path)
            .map(BufWriter::new)
            .map_err(|e| CodesError::Io(format!("cannot create {}: {e}", path.display())))
    };
    let failed = |e: csv::Error| CodesError::Io(format!("cannot write the export: {e}"));
    match output {
        Some(path) => write_codes(create(path)?, &snapshot.entries).map_err(failed)?,
        None => {
            let stdout = std::io::stdout().lock();
            let mut out = BufWriter::new(stdout);
            write_codes(&mut out, &snapshot.entries).map_err(failed)?;
            out.flush()
                .map_err(|e| CodesError::Io(format!("cannot write the export: {e}")))?;
        }
    }
    if let Some(path) = partners_output {
        write_partners(create(path)?, &snapshot.partners).map_err(failed)?;
    }
    Ok(())
}
