# --- secrets_prepare.sh, step 1 of `secrets push`: the env file's folder, and two temporary files
# beside it created by mktemp with mode 600, so no byte of a secret ever sits in a file others can
# read. Prints their paths; tpuctl then writes them over SFTP.
# params: env_file
# uses: paths

target=$(expand_home "$env_file")
mkdir -p -- "$(dirname -- "$target")"
echo "path=$target"
echo "temporary=$(mktemp -- "$target.tpuctl-XXXXXXXXXXXX")"
echo "values_temporary=$(mktemp -- "$target.tpuctl-XXXXXXXXXXXX")"
