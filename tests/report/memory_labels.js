const out = [];
for (const svg of document.querySelectorAll('svg.memory')) {
  const name = svg.closest('.memcard').id;
  for (const g of svg.querySelectorAll('g')) {
    const rects = [...g.querySelectorAll('rect.run')].map(r => r.getBBox());
    for (const t of g.querySelectorAll('text.rt')) {
      const b = t.getBBox();
      const host = rects.find(r => b.y >= r.y - 1 && b.y + b.height <= r.y + r.height + 1);
      if (!host || b.x < host.x - 0.5 || b.x + b.width > host.x + host.width + 0.5)
        out.push([name, 'label outside its run', t.textContent, b.x, b.width, host && host.x, host && host.width]);
    }
  }
  const gpas = [...svg.querySelectorAll('text.gpa')].map(t => [t.textContent, t.getBBox()]);
  for (let i = 0; i < gpas.length; i++) for (let j = i + 1; j < gpas.length; j++) {
    const [ta, a] = gpas[i], [tb, b] = gpas[j];
    if (a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height)
      out.push([name, 'gpa overlap', ta, tb]);
  }
  const vb = svg.viewBox.baseVal;
  for (const t of svg.querySelectorAll('text')) {
    const b = t.getBBox();
    if (b.x < -0.5 || b.x + b.width > vb.width + 0.5 || b.y + b.height > vb.height + 0.5)
      out.push([name, 'text outside the picture', t.textContent]);
  }
}
return out;
