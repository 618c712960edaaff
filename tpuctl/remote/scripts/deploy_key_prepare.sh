# --- deploy_key_prepare.sh, step 1 of copying the deploy key: ~/.ssh (mode 700 when created here) and a temporary file
# beside the key's place, created by mktemp with mode 600, that tpuctl then writes over SFTP.
# params: key_path
# uses: paths

target=$(expand_home "$key_path")
folder=$(dirname -- "$target")
(umask 077 && mkdir -p -- "$folder")
echo "path=$target"
echo "temporary=$(mktemp -- "$target.tpuctl-XXXXXXXXXXXX")"
