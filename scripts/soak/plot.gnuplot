# The soak's figure: RSS, CPU and spool size per minute (scripts/soak.sh).
# Usage: gnuplot -e "dir='target/soak'" scripts/soak/plot.gnuplot
set datafile separator ","
set terminal png size 1000,700
set output dir."/soak.png"
set multiplot layout 3,1 title "taskprof agent soak (scripts/soak.sh)"
set xlabel "minutes"
set grid
set key off
# CPU per interval: the difference of the cumulative CPU seconds.
prev_cpu = NaN
prev_t = NaN
cpu_pct(t, c) = (d = (c - prev_cpu) / (t - prev_t) * 100, prev_cpu = c, prev_t = t, d)
set ylabel "RSS (MiB)"
set yrange [0:*]
set key bottom right
# Column 17 (RssAnon, the heap) came with the scoped soak; older runs lack it.
plot dir."/minutes.csv" every ::1 using ($1/60):($2/1024) with linespoints pt 7 ps 0.5 title "RSS", \
     dir."/minutes.csv" every ::1 using ($1/60):($17/1024) with linespoints pt 6 ps 0.5 title "of which anonymous"
set key off
set ylabel "CPU (% of one CPU)"
plot dir."/minutes.csv" every ::1 using ($1/60):(cpu_pct($1, $4)) with linespoints pt 7 ps 0.5
set ylabel "spool (KiB)"
plot dir."/minutes.csv" every ::1 using ($1/60):($6/1024) with linespoints pt 7 ps 0.5
unset multiplot
