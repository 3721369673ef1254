#!/usr/bin/env bash
# Start TensorBoard on the training logs: ./start_tensorboard.sh [LOGDIR] [PORT] [--bind_all]
set -euo pipefail
logdir="logs"; port="6006"; bind=(--host 127.0.0.1); positional=()
for arg in "$@"; do
  case "$arg" in
    --bind_all) bind=(--bind_all) ;;
    -h|--help) echo "usage: ./start_tensorboard.sh [LOGDIR=logs] [PORT=6006] [--bind_all]"; exit 0 ;;
    -*) echo "error: unknown option $arg (usage: ./start_tensorboard.sh [LOGDIR] [PORT] [--bind_all])" >&2; exit 2 ;;
    *) positional+=("$arg") ;;
  esac
done
if [ "${#positional[@]}" -gt 2 ]; then
  echo "error: too many arguments (usage: ./start_tensorboard.sh [LOGDIR] [PORT] [--bind_all])" >&2; exit 2
fi
[ "${#positional[@]}" -ge 1 ] && logdir="${positional[0]}"
[ "${#positional[@]}" -ge 2 ] && port="${positional[1]}"
if ! [[ "$port" =~ ^[0-9]+$ ]]; then echo "error: PORT must be a number, got '$port'" >&2; exit 2; fi
py="$(command -v python3 || command -v python || true)"
if [ -z "$py" ] || ! "$py" -c "import tensorboard" 2>/dev/null; then
  echo "error: TensorBoard is not installed: pip install -r requirements.txt" >&2; exit 2
fi
if [ ! -d "$logdir" ] || [ -z "$(find "$logdir" -name 'events.out.tfevents.*' -print -quit)" ]; then
  echo "error: no TensorBoard runs under '$logdir': start training first (python main.py train)" >&2; exit 2
fi
host="localhost"; [ "${bind[0]}" = "--bind_all" ] && host="$(hostname)"
echo "TensorBoard: http://$host:$port/  (logs: $logdir; Ctrl-C to stop)"
exec "$py" -m tensorboard.main --logdir "$logdir" --port "$port" "${bind[@]}"
