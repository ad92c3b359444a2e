function initials(name) {
  const parts = String(name || '?')
    .split(/[\s._-]+/)
    .filter(Boolean);
  const letters = parts.length > 1 ? parts[0][0] + parts[1][0] : (parts[0] || '?').slice(0, 2);
  return letters.toUpperCase();
}

function hue(name) {
  let h = 0;
  for (const c of String(name)) h = (h * 31 + c.codePointAt(0)) % 360;
  return h;
}

export default function Avatar({ name, picture, size = 36 }) {
  const style = { width: size, height: size, fontSize: size * 0.4 };
  if (picture) {
    return <img className="avatar" style={style} src={picture} alt="" referrerPolicy="no-referrer" />;
  }
  return (
    <span
      className="avatar"
      style={{ ...style, background: `hsl(${hue(name)} 55% 45%)` }}
      aria-hidden="true"
    >
      {initials(name)}
    </span>
  );
}
