# --- deploy_key_prepare.sh, step 1 of copying the deploy key: ~/.ssh (mode 700) and a temporary file
# beside the key's place, created by mktemp with mode 600, that tpuctl then writes over SFTP.
# params: key_path
# uses: paths

target=$(expand_home "$key_path")
folder=$(dirname -- "$target")
mkdir -p -m 700 -- "$folder"
echo "path=$target"
echo "temporary=$(mktemp -- "$target.tpuctl-XXXXXXXXXXXX")"
