#!/usr/bin/env bash
# A small scripted "agent": the kind of side effects a coding agent produces.
# Run under agentmon by scripts/demo.sh; DEMO_PORT is a local server to call.
set -u
work="${1:?usage: demo.sh WORKDIR}"
cd "$work"

echo "def main(): pass" > app.py               # write a new file
mkdir -p build && echo obj > build/app.o       # create a directory and a build output
mv app.py main.py                               # rename
chmod 755 main.py                               # change mode
ln -s main.py entry.py                          # symlink
echo "# edited" >> entry.py                     # write through the symlink: main.py
rm -r build                                     # delete files and a directory
echo "notes" > ../outside-the-task.txt           # a write outside the task's scope
bash -c 'echo "child shell in $PWD"; touch from-child.txt'   # a child shell
cat "$HOME/.ssh/id_ed25519" 2>/dev/null; cat .env >/dev/null 2>&1   # sensitive reads
# Call a local service (HTTP over bash's /dev/tcp).
if exec 3<>"/dev/tcp/127.0.0.1/${DEMO_PORT:-8080}"; then
    printf 'GET / HTTP/1.0\r\n\r\n' >&3
    head -c 64 <&3 >/dev/null
    exec 3<&-
fi
exit 0
