fn main() {
    let mut s = taskprof::bpf::Sampler::start(taskprof::bpf::SamplerConfig::sized_for(99, 2, 2)).unwrap();
    let t = std::time::Instant::now();
    while t.elapsed().as_secs() < 2 { let n = s.new_processes(std::time::Duration::from_millis(100)); if !n.is_empty() { println!("new {n:?}"); } }
    s.stop();
    println!("{:?}", s.stats().unwrap());
    for x in s.read_samples().unwrap().iter().take(5) { println!("{x:?}"); }
}
