# Sourced by the bench scripts: the upstream they measure against, nginx
# with one worker answering every request with a fixed 100-byte body (as
# ../shared/peerbench does), keep-alive without limits.
#
#   write_upstream_conf DIR PORT   writes DIR/up.conf (pid, logs, temp in DIR)

write_upstream_conf() {
  local dir=$1 port=$2
  cat > "$dir/up.conf" <<CONF
worker_processes 1; daemon off; pid $dir/up.pid; error_log $dir/up.err warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir; uwsgi_temp_path $dir; scgi_temp_path $dir;
  server { listen 127.0.0.1:$port backlog=4096;
    location / { return 200 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n"; } } }
CONF
}
