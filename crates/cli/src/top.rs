//! `wippy top`: the running node's processes, live, in the terminal (ratatui on crossterm).
//! Node totals and rates on top, then the hosts' worker load, the services, and the
//! processes sorted by the chosen column. Keys: `q`/Esc quit, `m` mailbox, `e` memory,
//! `c` CPU (steps), `p` PID order, `s` next sort.

use std::path::Path;
use std::time::{Duration, Instant};

use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};
use ratatui::Frame;

use crate::control::{age, bytes, sort, Client, Snapshot, Sort};

/// What changed since the previous reading, per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub messages: f64,
    pub spawns: f64,
}

pub fn rates(prev: &Snapshot, now: &Snapshot, dt: Duration) -> Rates {
    let s = dt.as_secs_f64().max(1e-3);
    Rates {
        messages: now.totals.messages.saturating_sub(prev.totals.messages) as f64 / s,
        spawns: now.totals.spawns.saturating_sub(prev.totals.spawns) as f64 / s,
    }
}

fn sort_name(s: Sort) -> &'static str {
    match s {
        Sort::Pid => "pid",
        Sort::Mailbox => "mailbox",
        Sort::Memory => "memory",
        Sort::Cpu => "cpu",
    }
}

/// Draw one screen.
pub fn draw(f: &mut Frame, snap: &Snapshot, rates: Rates, by: Sort) {
    let t = &snap.totals;
    let hosts_h = snap.hosts.len() as u16 + 3;
    let services_h = (snap.services.len() as u16).min(8) + 3;
    let [head, hosts, services, procs] =
        Layout::vertical([Constraint::Length(4), Constraint::Length(hosts_h), Constraint::Length(services_h), Constraint::Min(4)]).areas(f.area());
    let header = vec![
        Line::from(format!(
            "wippy node (os pid {})  up {}  processes {}  memory rss {}  lua {}",
            t.os_pid,
            age(t.uptime_ms),
            t.processes,
            bytes(t.memory_rss),
            bytes(t.memory_lua)
        )),
        Line::from(format!(
            "messages/s {:.0}  spawns/s {:.0}  exits normal {}  error {}  killed {}   sort: {} (m e c p s, q quits)",
            rates.messages,
            rates.spawns,
            t.exits_normal,
            t.exits_error,
            t.exits_killed,
            sort_name(by)
        )),
    ];
    f.render_widget(Paragraph::new(header).block(Block::default().borders(Borders::BOTTOM)), head);

    let bold = Style::default().add_modifier(Modifier::BOLD);
    let host_rows = snap.hosts.iter().map(|h| {
        Row::new(vec![
            h.name.clone(),
            format!("{}/{}", h.busy, h.workers),
            h.queued.to_string(),
            if h.max_processes > 0 { format!("{}/{}", h.processes, h.max_processes) } else { h.processes.to_string() },
        ])
    });
    f.render_widget(
        Table::new(host_rows, [Constraint::Min(16), Constraint::Length(10), Constraint::Length(8), Constraint::Length(20)])
            .header(Row::new(vec!["HOST", "BUSY", "QUEUE", "PROCESSES"]).style(bold))
            .block(Block::default().title("hosts").borders(Borders::TOP)),
        hosts,
    );

    let service_rows = snap.services.iter().map(|s| {
        Row::new(vec![
            s.id.clone(),
            s.state.clone(),
            s.restarts.to_string(),
            s.pid.clone().unwrap_or_else(|| "-".into()),
            s.error.clone().unwrap_or_default(),
        ])
    });
    f.render_widget(
        Table::new(service_rows, [Constraint::Min(20), Constraint::Length(9), Constraint::Length(9), Constraint::Length(24), Constraint::Min(10)])
            .header(Row::new(vec!["SERVICE", "STATE", "RESTARTS", "PID", "ERROR"]).style(bold))
            .block(Block::default().title("services").borders(Borders::TOP)),
        services,
    );

    let mut list = snap.processes.clone();
    sort(&mut list, by);
    let proc_rows = list.iter().map(|p| {
        Row::new(vec![
            p.pid.clone(),
            p.entry.clone().unwrap_or_else(|| "-".into()),
            p.host.clone(),
            p.state.clone(),
            p.mailbox.to_string(),
            if p.memory_exact { bytes(p.memory as u64) } else { format!("~{}", bytes(p.memory as u64)) },
            p.steps.to_string(),
            age(p.age_ms),
            p.names.join(","),
        ])
    });
    f.render_widget(
        Table::new(
            proc_rows,
            [
                Constraint::Length(26),
                Constraint::Min(16),
                Constraint::Length(14),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(6),
                Constraint::Min(8),
            ],
        )
        .header(Row::new(vec!["PID", "ENTRY", "HOST", "STATE", "MAILBOX", "MEMORY", "STEPS", "AGE", "NAME"]).style(bold))
        .block(Block::default().title(format!("processes ({})", snap.processes.len())).borders(Borders::TOP)),
        procs,
    );
}

/// `--once`: two readings `interval` apart, one screen printed as text (for scripts and
/// terminals without a TTY), `width` columns wide.
pub fn once(project_dir: &Path, by: Sort, interval: Duration, width: u16) -> Result<String, String> {
    let mut client = Client::connect(project_dir)?;
    let prev = client.snapshot()?;
    let t0 = Instant::now();
    std::thread::sleep(interval);
    let snap = client.snapshot()?;
    let r = rates(&prev, &snap, t0.elapsed());
    let height = 4 + (snap.hosts.len() as u16 + 3) + (snap.services.len() as u16).min(8) + 3 + snap.processes.len() as u16 + 2;
    let mut t = ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height)).map_err(|e| e.to_string())?;
    t.draw(|f| draw(f, &snap, r, by)).map_err(|e| e.to_string())?;
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let line: String = (0..buf.area.width).map(|x| buf[(x, y)].symbol().to_string()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    Ok(out)
}

/// Run the live view until `q`.
pub fn run(project_dir: &Path, by: Sort, interval: Duration) -> Result<(), String> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
    let mut client = Client::connect(project_dir)?;
    let mut prev = client.snapshot()?;
    let mut prev_at = Instant::now();
    let mut snap = prev.clone();
    let mut r = Rates::default();
    let mut by = by;
    let mut terminal = ratatui::try_init().map_err(|e| format!("cannot use the terminal: {e}"))?;
    let result = (|| -> Result<(), String> {
        let mut next = Instant::now() + interval;
        loop {
            terminal.draw(|f| draw(f, &snap, r, by)).map_err(|e| e.to_string())?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait).map_err(|e| e.to_string())? {
                if let Event::Key(k) = event::read().map_err(|e| e.to_string())? {
                    if k.kind == KeyEventKind::Press {
                        match k.code {
                            KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                            KeyCode::Char('m') => by = Sort::Mailbox,
                            KeyCode::Char('e') => by = Sort::Memory,
                            KeyCode::Char('c') => by = Sort::Cpu,
                            KeyCode::Char('p') => by = Sort::Pid,
                            KeyCode::Char('s') => {
                                by = match by {
                                    Sort::Pid => Sort::Mailbox,
                                    Sort::Mailbox => Sort::Memory,
                                    Sort::Memory => Sort::Cpu,
                                    Sort::Cpu => Sort::Pid,
                                }
                            }
                            _ => {}
                        }
                    }
                }
                continue;
            }
            next = Instant::now() + interval;
            let now = client.snapshot()?;
            let at = Instant::now();
            r = rates(&prev, &now, at - prev_at);
            prev = now.clone();
            prev_at = at;
            snap = now;
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Host, Proc, Service, Totals};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn proc(pid: &str, entry: &str, mailbox: usize, memory: usize, steps: u64) -> Proc {
        Proc {
            pid: pid.into(),
            entry: Some(entry.into()),
            host: "app:host".into(),
            state: "idle".into(),
            mailbox,
            mailbox_bytes: 0,
            memory,
            memory_exact: false,
            steps,
            age_ms: 61_000,
            names: vec![],
            actor: None,
        }
    }

    fn screen(snap: &Snapshot, by: Sort) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(120, 30)).unwrap();
        t.draw(|f| draw(f, snap, Rates { messages: 1500.0, spawns: 2.0 }, by)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| (0..buf.area.width).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>())
            .collect()
    }

    #[test]
    fn the_screen_shows_totals_hosts_services_and_sorted_processes() {
        let snap = Snapshot {
            totals: Totals { os_pid: 42, uptime_ms: 5_000, processes: 3, memory_rss: 20_000_000, memory_lua: 300_000, messages: 10, ..Totals::default() },
            hosts: vec![Host { name: "app:host".into(), workers: 2, busy: 1, queued: 0, processes: 3, max_processes: 0 }],
            services: vec![Service { id: "app:svc".into(), state: "Running".into(), attempt: 1, restarts: 2, pid: Some("{app:host|0x1}".into()), error: None }],
            processes: vec![proc("{app:host|0x1}", "app:a", 0, 100, 7), proc("{app:host|0x2}", "app:busy", 50, 200, 1), proc("{app:host|0x3}", "app:fat", 1, 9_000, 3)],
        };
        let lines = screen(&snap, Sort::Mailbox);
        let all = lines.join("\n");
        assert!(all.contains("processes 3"), "{all}");
        assert!(all.contains("messages/s 1500"), "{all}");
        assert!(all.contains("app:svc") && all.contains("Running"), "{all}");
        assert!(all.contains("1/2"), "busy/workers: {all}");
        let row = |entry: &str| lines.iter().position(|l| l.contains(entry)).unwrap_or_else(|| panic!("{entry} not shown: {all}"));
        // by mailbox: the busy one first
        assert!(row("app:busy") < row("app:fat") && row("app:fat") < row("app:a "), "{all}");
        let lines = screen(&snap, Sort::Memory);
        let row = |entry: &str| lines.iter().position(|l| l.contains(entry)).unwrap();
        assert!(row("app:fat") < row("app:busy"), "by memory");
        assert!(lines.join("\n").contains("sort: memory"));
    }

    #[test]
    fn rates_are_per_second() {
        let mut a = Snapshot::default();
        let mut b = Snapshot::default();
        a.totals.messages = 100;
        b.totals.messages = 600;
        b.totals.spawns = 10;
        let r = rates(&a, &b, Duration::from_millis(500));
        assert_eq!(r, Rates { messages: 1000.0, spawns: 20.0 });
    }
}
