# --- deploy_key_install.sh, step 2 of copying the deploy key: rename the written temporary file into
# place (atomic: git never sees half a key) and report its checksum and mode, never its bytes.
# params: path temporary

mv -f -- "$temporary" "$path"
echo "sha256=$(sha256sum < "$path" | cut -d' ' -f1)"
echo "mode=$(stat -c %a -- "$path")"
