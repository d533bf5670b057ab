#!/usr/bin/env bash
# usage: hydra_preempt.sh NAME SCENARIO   (SCENARIO: term_usr2 | preempt | cancel)
set -u
name=$1; scen=$2; dir=/tmp/ngt-probe/$name; rm -rf "$dir"
cd "$(dirname "$0")"
t0=$(date +%s.%N)
python hydra_app.py -m hydra/launcher=submitit_slurm "hydra.sweep.dir=$dir" lr=0.1,0.2 steps=25 \
  hydra.launcher.partition=low hydra.launcher.cpus_per_task=1 hydra.launcher.mem_gb=1 \
  hydra.launcher.timeout_min=60 hydra.launcher.max_num_timeout=3 hydra.launcher.signal_delay_s=30 \
  '+hydra.launcher.additional_parameters={requeue:true}' >"$dir.out" 2>&1 &
hp=$!
until [[ $(cat "$dir"/*/events.log 2>/dev/null | grep -c 'saved\|start') -ge 2 ]]; do sleep 0.5; done
sleep 6
arr=$(squeue -h -n hydra_app -o %F | head -1)
case $scen in
  term_usr2) scancel --signal=TERM "${arr}_0"; scancel --signal=USR2 "${arr}_1" ;;
  preempt) sbatch -Q -p high -c 2 -o /dev/null --wrap 'sleep 3' ;;
  cancel) scancel "${arr}_0" ;;
esac
wait $hp; rc=$?
echo "hydra rc=$rc after $(echo "$(date +%s.%N) - $t0" | bc)s"
grep -E 'Error|error' "$dir.out" | head -3
cut -c1-190 "$dir"/*/events.log | grep -v SLURM_ARRAY
grep -h requeue "$dir"/.submitit/*/*submission.sh
sacct -j "$arr" -D -X -o JobID,JobIDRaw,State,Start,End -P
