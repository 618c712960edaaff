# --- secrets_install.sh, step 2 of `secrets push`: keep a differing old env file as .previous, rename
# the new files into place (the .env as written, and PATH.values, the NUL-separated KEY=VALUE records
# that runs load), report checksums and modes.
# params: path temporary values_temporary

if [ -f "$path" ] && ! cmp -s -- "$path" "$temporary"; then
  cp -p -- "$path" "$path.previous"
  echo "previous=$path.previous"
fi
mv -f -- "$temporary" "$path"
mv -f -- "$values_temporary" "$path.values"
echo "sha256=$(sha256sum < "$path" | cut -d' ' -f1)"
echo "values_sha256=$(sha256sum < "$path.values" | cut -d' ' -f1)"
echo "mode=$(stat -c %a -- "$path")"
echo "values_mode=$(stat -c %a -- "$path.values")"
